//! A TCP proxy between clients and a server, to take the network away from
//! under the clients the way users lose it: every connection at once (and
//! new ones refused until it is back), bytes vanishing in flight, one
//! connection at random, or a connection that dies just as the server's
//! first WebSocket message (its Welcome) is on the way.
//!
//! A cut resets both sides (RST, zero linger), as a dead network path ends
//! up; what the proxy had read and not yet written is lost.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A TCP proxy to one upstream, or to several taken in turn (a load
/// balancer that sends a client's reconnection to another node),
/// listening on a port of its own.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<ProxyState>,
    accept: JoinHandle<()>,
}

#[derive(Default)]
struct ProxyState {
    /// New connections are reset at once (the network is down).
    refuse: AtomicBool,
    /// Bytes are read and dropped, both ways (in flight when it went down).
    blackhole: AtomicBool,
    /// How many of the next connections lose the server's first WebSocket
    /// message and are reset then.
    lose_first_message: AtomicU64,
    /// The open connections, by number (in order of acceptance).
    pipes: Mutex<BTreeMap<u64, JoinHandle<()>>>,
    /// Connections accepted and piped.
    accepted: AtomicU64,
    /// Connections reset by `cut_random` or a lost first message.
    cuts: AtomicU64,
}

/// What the proxy did, for a test's report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted and piped to the server.
    pub accepted: u64,
    /// Connections reset one by one (`cut_random`, a lost first message).
    pub cuts: u64,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        Proxy::start_many(vec![upstream]).await
    }

    /// A proxy that sends each new connection to the next of `upstreams`.
    pub async fn start_many(upstreams: Vec<SocketAddr>) -> Proxy {
        assert!(!upstreams.is_empty());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState::default());
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            let mut next_id = 0u64;
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if shared.refuse.load(Ordering::SeqCst) {
                    let _ = client.set_zero_linger();
                    continue;
                }
                let upstream = upstreams[next_id as usize % upstreams.len()];
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let _ = client.set_zero_linger();
                let _ = server.set_zero_linger();
                let doomed = shared
                    .lose_first_message
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                let id = next_id;
                next_id += 1;
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                // Registered before the task can end and remove itself.
                let mut pipes = shared.pipes.lock().unwrap();
                let state = shared.clone();
                let task = tokio::spawn(async move {
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let cut = tokio::select! {
                        () = pipe(cr, sw, &state.blackhole) => false,
                        cut = pipe_down(sr, cw, &state.blackhole, doomed) => cut,
                    };
                    state.pipes.lock().unwrap().remove(&id);
                    if cut {
                        state.cuts.fetch_add(1, Ordering::Relaxed);
                    }
                });
                pipes.insert(id, task);
            }
        });
        Proxy {
            addr,
            state,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// From now on bytes vanish in both directions.
    pub fn blackhole(&self) {
        self.state.blackhole.store(true, Ordering::SeqCst);
    }

    /// Resets every open connection and refuses new ones until `restore`.
    pub fn cut(&self) {
        self.state.refuse.store(true, Ordering::SeqCst);
        let pipes = std::mem::take(&mut *self.state.pipes.lock().unwrap());
        for task in pipes.into_values() {
            task.abort();
        }
    }

    /// The network is back.
    pub fn restore(&self) {
        self.state.blackhole.store(false, Ordering::SeqCst);
        self.state.refuse.store(false, Ordering::SeqCst);
    }

    /// How many connections are open.
    pub fn open(&self) -> usize {
        self.state.pipes.lock().unwrap().len()
    }

    /// Resets one open connection, picked by `rng` among all (whatever it
    /// is doing: upgrading, resuming, idle or busy), both ways. Returns its
    /// number, or `None` when none is open.
    pub fn cut_random(&self, rng: &mut impl Rng) -> Option<u64> {
        self.state.cut_random(rng)
    }

    /// The next `n` connections lose the server's first WebSocket message
    /// (what follows its HTTP upgrade response: the Welcome) and are reset
    /// as it arrives: the server has answered, the client never hears it.
    pub fn lose_first_message(&self, n: u64) {
        self.state.lose_first_message.fetch_add(n, Ordering::SeqCst);
    }

    /// In the background: `cuts` times, after a pause drawn by `rng` from
    /// `0..=2 * every`, resets a random open connection (`cut_random`);
    /// before one cut in `welcome_every` (none for 0), also dooms the next
    /// connection to lose its Welcome (`lose_first_message`). Resolves to
    /// the connections it reset.
    pub fn cut_randomly(
        &self,
        mut rng: StdRng,
        every: Duration,
        cuts: usize,
        welcome_every: usize,
    ) -> JoinHandle<u64> {
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut done = 0;
            for n in 0..cuts {
                let pause = rng.random_range(Duration::ZERO..=every * 2);
                tokio::time::sleep(pause).await;
                if welcome_every > 0 && n % welcome_every == 0 {
                    state.lose_first_message.fetch_add(1, Ordering::SeqCst);
                }
                if state.cut_random(&mut rng).is_some() {
                    done += 1;
                }
            }
            done
        })
    }

    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            accepted: self.state.accepted.load(Ordering::Relaxed),
            cuts: self.state.cuts.load(Ordering::Relaxed),
        }
    }
}

impl ProxyState {
    fn cut_random(&self, rng: &mut impl Rng) -> Option<u64> {
        let mut pipes = self.pipes.lock().unwrap();
        if pipes.is_empty() {
            return None;
        }
        let nth = rng.random_range(0..pipes.len());
        let id = *pipes.keys().nth(nth).expect("in range");
        pipes.remove(&id).expect("present").abort();
        self.cuts.fetch_add(1, Ordering::Relaxed);
        Some(id)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Copies `from` to `to` until either fails or `from` ends.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, blackhole: &AtomicBool) {
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if blackhole.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// [`pipe`] from the server to the client. If `doomed`, the bytes after
/// the HTTP response's head (the first WebSocket message) are dropped and
/// the connection ends there: returns true, a cut.
async fn pipe_down(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    blackhole: &AtomicBool,
    doomed: bool,
) -> bool {
    enum Doom {
        /// Not doomed: every byte goes through.
        Spared,
        /// Doomed, within the HTTP head (the bytes of it so far).
        InHead(Vec<u8>),
        /// Doomed, the head through: the next bytes are lost.
        AfterHead,
    }
    let mut doom = if doomed {
        Doom::InHead(Vec::new())
    } else {
        Doom::Spared
    };
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        if blackhole.load(Ordering::SeqCst) {
            continue;
        }
        let mut chunk = &buf[..n];
        match &mut doom {
            Doom::Spared => {}
            Doom::AfterHead => return true,
            Doom::InHead(seen) => {
                let before = seen.len();
                seen.extend_from_slice(chunk);
                if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = end + 4 - before;
                    let lost = head < chunk.len();
                    chunk = &chunk[..head];
                    if lost {
                        let _ = to.write_all(chunk).await;
                        return true;
                    }
                    doom = Doom::AfterHead;
                }
            }
        }
        if to.write_all(chunk).await.is_err() {
            return false;
        }
    }
}
