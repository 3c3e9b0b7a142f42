//! What the tests that run a fleet share (`scale_cluster`, `storm`): the
//! worker, which is the test binary itself, and the nodes.
//!
//! A process holds at most about 19,000 sockets here, so a fleet's clients
//! live in worker processes, and the load generator's own binary is not one
//! this package's tests can name: each fleet test binary has a test named
//! `fleet_worker` that calls [`worker_entry`], and [`worker_command`]
//! starts the binary again with that test alone.

use std::process::Command;

use switchboard_load::fleet;

use super::child::{Server, LIFTED};
use super::redis::Redis;

/// Starts `n` nodes of the cluster `cluster` on `redis`, with the rate
/// and per-address limits lifted (every client of a fleet comes from one
/// of a few 127.0.0.x addresses) and `extra` flags.
pub fn start_nodes(redis: &Redis, n: usize, cluster: &str, extra: &[&str]) -> Vec<Server> {
    let url = redis.url();
    let mut args = vec!["--redis-url", url.as_str(), "--cluster", cluster];
    args.extend_from_slice(LIFTED);
    args.extend_from_slice(extra);
    (0..n).map(|_| Server::start(&args)).collect()
}

const WORKER_ENV: &str = "SWITCHBOARD_FLEET_WORKER";

/// The body of a test binary's `fleet_worker` test: the fleet's worker
/// when [`worker_command`] started the binary, nothing otherwise.
pub fn worker_entry() {
    if std::env::var_os(WORKER_ENV).is_none() {
        return;
    }
    if let Err(e) = fleet::worker_main() {
        eprintln!("fleet worker: {e}");
        std::process::exit(1);
    }
}

/// This test binary again, running its `fleet_worker` test alone.
pub fn worker_command() -> Command {
    let exe = std::env::current_exe().expect("the test binary");
    let mut cmd = Command::new(exe);
    cmd.args([
        "fleet_worker",
        "--exact",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env(WORKER_ENV, "1");
    cmd
}
