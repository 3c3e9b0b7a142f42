//! `switchboard-load`: a load generator for the switchboard server.
//!
//! ```text
//! switchboard-load relay --pairs 100 --window 16 --duration 10 --server-pid $(pgrep -n switchboard)
//! switchboard-load handshake --size 2 --concurrency 64 --duration 10
//! switchboard-load idle --connections 15000 --source-ips 4 --server-pid PID
//! switchboard-load churn --workers 32 --duration 10
//! switchboard-load --url ws://127.0.0.1:3536 matchbox --pairs 100 --server-pid PID
//! switchboard-load --url ws://127.0.0.1:8081/ws directory --peer-url ws://127.0.0.1:8082/ws
//! switchboard-load --source-ips 16 fleet --nodes ws://127.0.0.1:8081/ws,ws://127.0.0.1:8082/ws --connections 50000
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use switchboard_load::{
    self as load, churn, directory, fleet, handshake, idle, matchbox_relay, relay, seed_relay,
    text_relay, Common, LoadError,
};

#[derive(Parser, Debug)]
#[command(version, about = "Load generator for the switchboard signaling server")]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args, Debug)]
struct CommonArgs {
    /// The server's WebSocket URL.
    #[arg(long, global = true, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Spread client sockets over 127.0.0.1..=127.0.0.N (N > 1 binds each
    /// socket with IP_BIND_ADDRESS_NO_PORT).
    #[arg(long, global = true, default_value_t = 1)]
    source_ips: u8,
    /// Runtime threads; 1 runs on a current-thread runtime.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// The server's pid, to report its CPU share and RSS.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Print the report as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Ask for session resume (acknowledgements and replay buffers both
    /// ways), to measure its cost.
    #[arg(long, global = true)]
    resume: bool,
    /// No progress bar.
    #[arg(long, global = true)]
    quiet: bool,
    /// Keep the load generator's threads spinning instead of sleeping in
    /// epoll, so latency figures leave out its own wake-up time (costs a
    /// full core per thread).
    #[arg(long, global = true)]
    busy_poll: bool,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Pairs in 1:1 rooms bounce ICE-sized messages with a window in flight:
    /// by default one side initiates and each frame is its own WebSocket
    /// message, as browsers send signals.
    Relay {
        #[command(flatten)]
        run: RelayArgs,
        /// Both sides initiate `window` messages (a pattern that flatters
        /// the server: twice the load for the same latency).
        #[arg(long)]
        both_sides: bool,
        /// Pack everything a side has to send into one WebSocket message (as
        /// an SDK that batches would; halves the server's system calls).
        #[arg(long)]
        coalesce: bool,
        /// Connect each pair's second peer here instead of --url: another
        /// node of a cluster, to measure cross-node relay.
        #[arg(long)]
        peer_url: Option<String>,
    },
    /// Rooms of K peers run offer/answer/ICE with real SDP.
    Handshake {
        /// Stop after this many rooms (0: run for the duration).
        #[arg(long, default_value_t = 0)]
        rooms: usize,
        /// Peers per room.
        #[arg(long, default_value_t = 2)]
        size: usize,
        /// Rooms negotiating at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Keep connections open from room to room (join, negotiate, leave).
        #[arg(long)]
        reuse_connections: bool,
    },
    /// Many logged-in, joined connections holding still.
    Idle {
        /// Connections.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Connects in progress at once.
        #[arg(long, default_value_t = 128)]
        connect_concurrency: usize,
        /// Seconds to hold after the last one joined.
        #[arg(long, default_value_t = 0.0)]
        hold: f64,
        /// Speak seed 001's JSON dialect (for /compat/pair and the
        /// tutorial's own server).
        #[arg(long, conflicts_with = "matchbox")]
        seed001: bool,
        /// Speak matchbox's protocol (--url is matchbox_server's base URL;
        /// each pair's room is a path under it).
        #[arg(long)]
        matchbox: bool,
    },
    /// The relay in seed 001's JSON dialect (1:1 rooms), for any server
    /// that speaks it: point --url at switchboard's /compat/pair or at the
    /// tutorial's own server.
    Seed001(RelayArgs),
    /// The relay in matchbox's protocol, for matchbox_server: --url is its
    /// base URL, and each pair gets a room of its own under it.
    Matchbox(RelayArgs),
    /// Connect/join/leave/disconnect loops.
    Churn {
        /// Concurrent loops.
        #[arg(long, default_value_t = 16)]
        workers: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Each loop drops a session's connection and resumes it on a new
        /// one (the resume rate) instead of opening a new session.
        #[arg(long)]
        resume_sessions: bool,
        /// With --resume-sessions: another node of the cluster to resume
        /// on (repeatable); resumes go to the nodes in turn, so each one
        /// moves the session to another node.
        #[arg(long)]
        resume_on: Vec<String>,
    },
    /// Login/join/leave/logout loops on open connections: the latency of
    /// each request a cluster node decides in its shared directory.
    Directory {
        /// Concurrent loops, one connection each.
        #[arg(long, default_value_t = 16)]
        workers: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Another node of the cluster: each worker's room gets a member
        /// there, and every Join is timed until its PeerJoined reaches it.
        #[arg(long)]
        peer_url: Option<String>,
    },
    /// One run of many clients over several nodes and worker processes:
    /// pairs split over two nodes connect, log in, join, hold (answering
    /// heartbeats), then randomly chosen pairs negotiate across nodes.
    /// With --kill-pid, a reconnect storm comes between the hold and the
    /// negotiations.
    Fleet(FleetArgs),
    /// A fleet's worker process (started by `fleet`; reads its slice on
    /// stdin).
    #[command(hide = true)]
    FleetWorker,
}

/// How many pairs relay, with what window, for how long.
#[derive(Args, Debug)]
struct RelayArgs {
    /// Pairs of connections.
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// Messages each initiating side keeps in flight.
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
}

impl RelayArgs {
    fn options(&self) -> text_relay::Options {
        text_relay::Options {
            pairs: self.pairs,
            window: self.window,
            duration: Duration::from_secs_f64(self.duration),
        }
    }
}

#[derive(Args, Debug)]
struct FleetArgs {
    /// The nodes' WebSocket URLs, comma-separated (at least two).
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<String>,
    /// Clients in all (even).
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Worker processes (0: one per 18,000 clients).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Pairs each worker connects at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Seconds every client stays connected after the last one joined.
    #[arg(long, default_value_t = 10.0)]
    hold: f64,
    /// Randomly chosen pairs that negotiate after the hold.
    #[arg(long, default_value_t = 100)]
    negotiate: usize,
    /// Seed of that choice (0: from the clock).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the run's phase here (connecting, holding, arming, storm,
    /// settling, negotiating, done).
    #[arg(long)]
    phase_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    storm: StormArgs,
}

/// A reconnect storm after the hold: the first node is killed and its
/// clients come back on the others.
#[derive(Args, Debug)]
struct StormArgs {
    /// Kill this process (the first node of --nodes) with SIGKILL after
    /// the hold, and bring its clients back on the other nodes.
    #[arg(long, requires = "storm_clients")]
    kill_pid: Option<u32>,
    /// Clients on the first node (each the member A of a pair whose B is on
    /// another node); the other pairs span two of the other nodes.
    #[arg(long)]
    storm_clients: Option<usize>,
    /// Pairs on the first node that stream signals both ways through the
    /// kill, each of which is accounted for.
    #[arg(long, default_value_t = 100)]
    stream_pairs: usize,
    /// Milliseconds between two signals of a streaming member.
    #[arg(long, default_value_t = 100)]
    signal_interval_ms: u64,
    /// The clients' first reconnect delay, ms (equal jitter, doubling).
    #[arg(long, default_value_t = 100)]
    backoff_initial_ms: u64,
    /// Their longest reconnect delay, ms.
    #[arg(long, default_value_t = 10_000)]
    backoff_max_ms: u64,
    /// Seconds to wait for every client to be back.
    #[arg(long, default_value_t = 300)]
    storm_timeout: u64,
}

impl StormArgs {
    fn options(&self) -> Option<fleet::storm::Options> {
        let (pid, clients) = (self.kill_pid?, self.storm_clients?);
        Some(fleet::storm::Options {
            stream_pairs: self.stream_pairs,
            signal_interval: Duration::from_millis(self.signal_interval_ms),
            backoff_initial: Duration::from_millis(self.backoff_initial_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms),
            timeout: Duration::from_secs(self.storm_timeout),
            ..fleet::storm::Options::new(pid, clients)
        })
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if matches!(cli.scenario, Scenario::FleetWorker) {
        return match fleet::worker_main() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchboard-load fleet-worker: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Scenario::Fleet(args) = &cli.scenario {
        let options = fleet::Options {
            nodes: args.nodes.clone(),
            connections: args.connections,
            workers: args.workers,
            connect_concurrency: args.connect_concurrency,
            hold: Duration::from_secs_f64(args.hold),
            negotiate: args.negotiate,
            source_ips: cli.common.source_ips,
            seed: args.seed,
            progress: !cli.common.quiet,
            phase_file: args.phase_file.clone(),
            storm: args.storm.options(),
        };
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => {
                eprintln!("switchboard-load: cannot find its own binary: {e}");
                return ExitCode::FAILURE;
            }
        };
        return match fleet::run(&options, &|| {
            let mut cmd = std::process::Command::new(&exe);
            cmd.arg("fleet-worker");
            cmd
        }) {
            Ok(report) => {
                print(cli.common.json, &report);
                if report.ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(2)
                }
            }
            Err(e) => {
                eprintln!("switchboard-load fleet: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Err(e) = load::raise_fd_limit() {
        eprintln!("warning: cannot raise the open-file limit: {e}");
    }
    let runtime = if cli.common.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.common.threads)
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    let common = Common {
        url: cli.common.url.clone(),
        source_ips: cli.common.source_ips,
        server_pid: cli.common.server_pid,
        progress: !cli.common.quiet,
        resume: cli.common.resume,
    };
    let json = cli.common.json;
    if cli.common.busy_poll {
        for _ in 0..cli.common.threads.max(1) {
            runtime.spawn(async {
                loop {
                    tokio::task::yield_now().await;
                }
            });
        }
    }
    let result = runtime.block_on(async move {
        let secs = Duration::from_secs_f64;
        match cli.scenario {
            Scenario::Relay {
                run,
                both_sides,
                coalesce,
                peer_url,
            } => {
                let run = run.options();
                let o = relay::Options {
                    peer_url,
                    pairs: run.pairs,
                    window: run.window,
                    duration: run.duration,
                    pattern: relay::Pattern {
                        both_sides,
                        coalesce,
                    },
                };
                print(json, &relay::run(&common, &o).await?);
            }
            Scenario::Handshake {
                rooms,
                size,
                concurrency,
                duration,
                reuse_connections,
            } => {
                if size < 2 {
                    return Err(LoadError::Unexpected("--size must be at least 2".into()));
                }
                let o = handshake::Options {
                    size,
                    concurrency,
                    rooms,
                    reuse_connections,
                    duration: secs(duration),
                };
                print(json, &handshake::run(&common, &o).await?);
            }
            Scenario::Idle {
                connections,
                connect_concurrency,
                hold,
                seed001,
                matchbox,
            } => {
                let dialect = if seed001 {
                    idle::Dialect::Seed001
                } else if matchbox {
                    idle::Dialect::Matchbox
                } else {
                    idle::Dialect::Binary
                };
                let o = idle::Options {
                    connections,
                    connect_concurrency,
                    hold: secs(hold),
                    dialect,
                };
                print(json, &idle::run(&common, &o).await?);
            }
            Scenario::Seed001(args) => {
                print(json, &seed_relay::run(&common, &args.options()).await?);
            }
            Scenario::Matchbox(args) => {
                print(json, &matchbox_relay::run(&common, &args.options()).await?);
            }
            Scenario::Churn {
                workers,
                duration,
                resume_sessions,
                resume_on,
            } => {
                let o = churn::Options {
                    workers,
                    duration: secs(duration),
                    resume: resume_sessions,
                    resume_on,
                };
                let common = Common {
                    resume: common.resume || resume_sessions,
                    ..common.clone()
                };
                print(json, &churn::run(&common, &o).await?);
            }
            Scenario::Directory {
                workers,
                duration,
                peer_url,
            } => {
                let o = directory::Options {
                    workers,
                    duration: secs(duration),
                    peer_url,
                };
                print(json, &directory::run(&common, &o).await?);
            }
            Scenario::Fleet(_) | Scenario::FleetWorker => unreachable!("handled above"),
        }
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard-load: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print(json: bool, report: &impl Serialize) {
    if json {
        println!(
            "{}",
            serde_json::to_string(report).expect("reports serialize")
        );
    } else {
        print!("{}", load::table(report));
    }
}
