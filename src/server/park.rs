//! Where resumable sessions wait for their client after a drop, and how a
//! resume takes one back (docs/PROTOCOL.md, section 11a).
//!
//! A resumable session is in `Shared::resumable` under its current token
//! for its whole life: `Live` while a connection serves it, `Parked` while
//! it waits. Parking starts a timer; a session still parked when its grace
//! runs out is ended as timed out (its rooms get `PeerLeft{TIMED_OUT}`,
//! once). Taking a `Live` session wakes its connection, which parks it and
//! closes its (half-open) socket.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use super::{Resumable, Shared, EXPIRED_KEPT};
use crate::auth::Grant;
use crate::directory::{Directory, Given, SessionSource};
use crate::outbox::Outbox;
use crate::protocol::{LeaveReason, ResumeRefusal, UserName};
use crate::rate::RateGuard;
use crate::resume::Token;
use crate::session::Session;

/// How long a resume waits for a half-open connection to hand its session
/// over.
const TAKEOVER_WAIT: Duration = Duration::from_secs(2);

/// How long ending an expired session may take (as a connection's end).
const TEARDOWN_LIMIT: Duration = Duration::from_secs(5);

/// Marks a served session's token, so a resume can take it over.
pub(super) fn live<D: Directory>(
    shared: &Shared<D>,
    session: &Session<D>,
) -> Option<Arc<tokio::sync::Notify>> {
    let token = session.resumption()?.token();
    let notify = Arc::new(tokio::sync::Notify::new());
    shared.resumable.lock().insert(
        token,
        Resumable::Live(notify.clone(), session.identity().cloned()),
    );
    Some(notify)
}

/// Forgets a session that ends for good (its current and older token).
pub(super) fn forget<D: Directory>(shared: &Shared<D>, session: &mut Session<D>) {
    let Some(resume) = session.resumption_mut() else {
        return;
    };
    let (token, older) = (resume.token(), resume.relist(None));
    let mut resumable = shared.resumable.lock();
    if matches!(
        resumable.get(&token),
        Some(Resumable::Live(..) | Resumable::Resuming)
    ) {
        resumable.remove(&token);
    }
    unlist(&mut resumable, older);
}

fn unlist<D>(resumable: &mut std::collections::HashMap<Token, Resumable<D>>, older: Option<Token>) {
    if let Some(older) = older {
        if matches!(resumable.get(&older), Some(Resumable::Older(_))) {
            resumable.remove(&older);
        }
    }
}

/// Gives a resumed session a new token, keeping the one its client holds
/// valid (listed as `Older`) until the client shows it got the new one.
pub(super) fn rotate<D: Directory>(shared: &Shared<D>, session: &mut Session<D>, presented: Token) {
    let node = session.node();
    let Some(resume) = session.resumption_mut() else {
        return;
    };
    let token = resume.rotate(presented, node);
    let older = resume.previous();
    let unlisted = resume.relist(older);
    let mut resumable = shared.resumable.lock();
    if unlisted != older {
        unlist(&mut resumable, unlisted);
    }
    if let Some(older) = older {
        resumable.insert(older, Resumable::Older(token));
    }
    resumable.insert(token, Resumable::Resuming);
}

/// Parks a session whose connection dropped, for the grace period.
pub(super) fn park<D: Directory>(
    shared: &Arc<Shared<D>>,
    session: Box<Session<D>>,
    outbox: Arc<Outbox>,
) {
    let Some(resume) = session.resumption() else {
        return;
    };
    let (token, grace) = (resume.token(), resume.limits().grace);
    let id = shared.next_park_id();
    let peer = session.peer_id();
    shared.resumable.lock().insert(
        token,
        Resumable::Parked {
            session,
            outbox,
            id,
        },
    );
    info!(
        peer = peer.0,
        grace_ms = grace.as_millis() as u64,
        "session waits for its client"
    );
    let shared = shared.clone();
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        let expired = {
            let mut resumable = shared.resumable.lock();
            match resumable.get(&token) {
                Some(Resumable::Parked { id: waiting, .. }) if *waiting == id => {
                    resumable.remove(&token)
                }
                _ => None,
            }
        };
        if let Some(Resumable::Parked { mut session, .. }) = expired {
            let older = session.resumption().and_then(|r| r.previous());
            forget(&shared, &mut session);
            {
                let mut recent = shared.expired.lock();
                for token in std::iter::once(token).chain(older) {
                    if recent.len() >= EXPIRED_KEPT {
                        recent.pop_front();
                    }
                    recent.push_back(token);
                }
            }
            info!(peer = peer.0, "session not resumed in time");
            end(session, LeaveReason::TimedOut).await;
        }
    });
}

/// Ends a session that will not be resumed: its rooms hear of it once.
pub(super) async fn end<D: Directory>(mut session: Box<Session<D>>, reason: LeaveReason) {
    session.leave_reason = reason;
    if tokio::time::timeout(TEARDOWN_LIMIT, session.teardown())
        .await
        .is_err()
    {
        warn!(peer = session.peer_id().0, "session teardown timed out");
    }
}

/// Takes the session `token` names for a client with access-token
/// identity `identity`, waking its connection first if it is still
/// served; or says why it cannot be resumed.
pub(super) async fn take<D: Directory>(
    shared: &Shared<D>,
    token: &[u8],
    identity: Option<&UserName>,
) -> Result<(Box<Session<D>>, Arc<Outbox>), ResumeRefusal> {
    let Ok(token) = Token::try_from(token) else {
        return Err(ResumeRefusal::UnknownToken);
    };
    let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
    loop {
        {
            let mut resumable = shared.resumable.lock();
            // An older token the client may still hold names the session
            // under its current one.
            let (key, older) = match resumable.get(&token) {
                Some(Resumable::Older(current)) => (*current, true),
                _ => (token, false),
            };
            match resumable.get(&key) {
                Some(Resumable::Parked { session, .. }) => {
                    let resume = session.resumption();
                    if older && resume.and_then(|r| r.previous()) != Some(token) {
                        // The client has the newer token: this one is void.
                        resumable.remove(&token);
                        return Err(ResumeRefusal::UnknownToken);
                    }
                    if session.identity() != identity {
                        return Err(ResumeRefusal::Forbidden);
                    }
                    if let Some(Resumable::Parked {
                        session, outbox, ..
                    }) = resumable.remove(&key)
                    {
                        return Ok((session, outbox));
                    }
                }
                Some(Resumable::Live(notify, owner)) => {
                    if owner.as_ref() != identity {
                        return Err(ResumeRefusal::Forbidden);
                    }
                    notify.notify_one();
                }
                // Another connection is finishing a resume of it: wait
                // for that to end one way or the other.
                Some(Resumable::Resuming) => {}
                Some(Resumable::Older(_)) | None => {
                    if older {
                        resumable.remove(&token);
                    }
                    return Err(if shared.expired.lock().contains(&token) {
                        ResumeRefusal::Expired
                    } else {
                        ResumeRefusal::UnknownToken
                    });
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ResumeRefusal::UnknownToken);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How many sessions wait for their clients.
pub(super) fn parked<D>(shared: &Shared<D>) -> usize {
    shared
        .resumable
        .lock()
        .values()
        .filter(|r| matches!(r, Resumable::Parked { .. }))
        .count()
}

/// Ends every parked session (the node is shutting down); resolves when
/// they have all left their rooms.
pub(super) fn end_all<D: Directory>(
    shared: &Shared<D>,
    reason: LeaveReason,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let parked: Vec<Box<Session<D>>> = {
        let mut resumable = shared.resumable.lock();
        let tokens: Vec<Token> = resumable
            .iter()
            .filter(|(_, r)| matches!(r, Resumable::Parked { .. }))
            .map(|(t, _)| *t)
            .collect();
        let parked = tokens
            .into_iter()
            .filter_map(|t| match resumable.remove(&t) {
                Some(Resumable::Parked { session, .. }) => Some(session),
                _ => None,
            })
            .collect();
        // Every older token named one of these, or a session now gone.
        resumable.retain(|_, r| !matches!(r, Resumable::Older(_)));
        parked
    };
    if !parked.is_empty() {
        info!(
            sessions = parked.len(),
            "ending sessions that waited for a resume"
        );
    }
    async move {
        for session in parked {
            end(session, reason).await;
        }
    }
}

/// Forgets that a resume with `token` is under way, if one was marked.
pub(super) fn unmark<D>(shared: &Shared<D>, token: &[u8]) {
    let Ok(token) = Token::try_from(token) else {
        return;
    };
    let mut resumable = shared.resumable.lock();
    if matches!(resumable.get(&token), Some(Resumable::Resuming)) {
        resumable.remove(&token);
    }
}

/// Whether another node of a cluster may hold the session `token` names
/// (the one the token names, or one this node gave it to).
pub(super) fn elsewhere<D: Directory>(shared: &Shared<D>, token: &[u8]) -> bool {
    token.len() == 32 && shared.ctx.directory.identity().is_some()
}

/// Brings the session `token` names from the node that holds it, for a
/// client with `grant`. The work runs in its own task: should this
/// connection drop meanwhile, the session that arrives waits here for the
/// client's next try, instead of being lost between two nodes.
pub(super) async fn fetch<D: Directory>(
    shared: &Arc<Shared<D>>,
    token: &[u8],
    grant: Option<Box<Grant>>,
) -> Result<(Box<Session<D>>, Arc<Outbox>), ResumeRefusal> {
    let Ok(token) = Token::try_from(token) else {
        return Err(ResumeRefusal::UnknownToken);
    };
    // Marked as being resumed meanwhile: another try with this token (on
    // this node, or passed on by the old one) waits for this one.
    {
        let mut resumable = shared.resumable.lock();
        if resumable.contains_key(&token) {
            return Err(ResumeRefusal::UnknownToken);
        }
        resumable.insert(token, Resumable::Resuming);
    }
    let unmark = move |shared: &Shared<D>| unmark(shared, &token);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let shared = shared.clone();
    tokio::spawn(async move {
        let identity = grant.as_deref().map(|g| g.identity().clone());
        let fetched = match shared.ctx.directory.fetch_session(token, identity).await {
            Ok(fetched) => fetched,
            Err(why) => {
                unmark(&shared);
                let _ = tx.send(Err(why));
                return;
            }
        };
        let now = Instant::now();
        let session = Box::new(Session::adopt(
            shared.ctx.clone(),
            fetched.handoff,
            fetched.outbox.clone(),
            grant,
            RateGuard::sharing(&shared.rate, now),
            now,
            SystemTime::now(),
        ));
        if !fetched.moved {
            // Its old node died meanwhile: its clean-up announces the
            // departure (once; this teardown finds the rooms left).
            unmark(&shared);
            tokio::spawn(end(session, LeaveReason::TimedOut));
            let _ = tx.send(Err(ResumeRefusal::Expired));
            return;
        }
        if let Err(Ok((mut session, outbox))) = tx.send(Ok((session, fetched.outbox))) {
            // The client is gone again: the session waits here, under its
            // token and the one the client presented (its previous, if the
            // Welcome that carried the current one was lost).
            let current = session.resumption().map(|r| r.token());
            if current != Some(token) {
                if let (Some(current), Some(resume)) = (current, session.resumption_mut()) {
                    resume.relist(Some(token));
                    shared
                        .resumable
                        .lock()
                        .insert(token, Resumable::Older(current));
                }
            }
            park(&shared, session, outbox);
        }
    });
    rx.await.unwrap_or(Err(ResumeRefusal::UnknownToken))
}

/// Gives this node's resumable sessions to other nodes of a cluster (the
/// directory holds it; it holds the server weakly).
pub(super) struct Giver<D>(pub std::sync::Weak<Shared<D>>);

impl<D: Directory> SessionSource for Giver<D> {
    fn give(&self, token: Token, identity: Option<UserName>) -> Given {
        let Some(shared) = self.0.upgrade() else {
            return Box::pin(std::future::ready(Err(ResumeRefusal::UnknownToken)));
        };
        Box::pin(async move {
            let (mut session, outbox) = take(&shared, &token, identity.as_ref()).await?;
            forget(&shared, &mut session);
            let queued = outbox
                .take_queued()
                .into_iter()
                .map(|(frame, origin)| (frame, origin.map(|o| (o.peer, o.seq))))
                .collect();
            match session.hand_off(queued) {
                Ok(handoff) => {
                    if let Some(m) = shared.ctx.metrics.as_deref() {
                        m.resume(crate::metrics::ResumeOutcome::HandedOn);
                    }
                    Ok((handoff, outbox))
                }
                Err(session) => {
                    tokio::spawn(end(session, LeaveReason::TimedOut));
                    Err(ResumeRefusal::UnknownToken)
                }
            }
        })
    }
}
