//! Open files: every connection is a descriptor, so the connection cap must
//! fit under the process's limit, with a reserve left over.
//!
//! At start the soft `RLIMIT_NOFILE` is raised to the hard limit, and
//! `max_connections` is lowered (with a warning) to what is left after the
//! descriptors already open and [`RESERVE`]. The reserve keeps the listener
//! able to accept past the cap, so a client over it gets an HTTP 503 (and
//! `/healthz` an answer) instead of hanging in the accept queue behind an
//! `EMFILE`.

use tracing::{info, warn};

use crate::config::Config;

/// Connections answered at once while over a connection limit (each reads
/// one HTTP request, then closes).
pub(super) const REFUSAL_SLOTS: usize = 32;

/// Descriptors kept free beyond the connection cap: the refusal slots, a
/// refused connection being written a 503 by the accept loop itself, and
/// what the runtime, TLS files and logging open later.
pub(super) const RESERVE: u64 = REFUSAL_SLOTS as u64 + 64;

/// Raises the soft open-files limit and fits `config.max_connections`
/// under it.
pub(super) fn fit(config: &mut Config) {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            warn!(error = %e, "cannot read or raise the open-files limit; max_connections unchecked");
            return;
        }
    };
    let open = open_now();
    // Plus what the metrics listener and the webhook clients may hold.
    let reserve = RESERVE
        + super::http::METRICS_CONNECTIONS as u64
        + (crate::webhooks::IN_FLIGHT * config.webhook_urls.len()) as u64;
    let usable = limit.saturating_sub(open).saturating_sub(reserve).max(1);
    if config.max_connections as u64 > usable {
        warn!(
            max_connections = config.max_connections,
            lowered_to = usable,
            open_files_limit = limit,
            already_open = open,
            reserve,
            "max_connections lowered to fit the open-files limit (raise it with `ulimit -Hn` \
             or LimitNOFILE= to serve more)"
        );
        config.max_connections = usable as usize;
    } else {
        info!(open_files_limit = limit, "open-files limit");
    }
}

/// Descriptors open in this process now (0 where that cannot be read).
fn open_now() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}
