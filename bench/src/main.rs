//! sessiond-bench: starts sessiond itself (as child processes), drives it over loopback with
//! bounded counts and time, stops by itself, and prints markdown tables (BENCHMARKS.md).
//!
//! ```text
//! cargo run --release -p sessiond-bench -- <scenario> [flags]
//!   idle      server RSS per idle authenticated socket          --sizes 1000,5000,10000,19000
//!   everyone  admin logout-everyone: call → last socket's frame --sizes 1000,5000,10000,19000
//!   revoke    one logout → its socket's frame, N idle held      --revokes 1000 --rate 100 --idle 10000
//!   revoke-under-login   the same while 8 clients log in flat out
//!   cluster   revoke across instances (PostgreSQL NOTIFY)       --revokes 1000 --rate 100 --idle 10000
//!   churn     reconnect storm after a restart                   --sizes 19000
//!   soak      churn and a request mix for a while, bounded?         --sizes 10000 --seconds 600
//!   refresh   refreshes/s from pre-minted tokens, SQLite + PG   --count 20000 --concurrency 64
//!   refresh-store  the rotation transaction alone, in process   --count 5000
//!   verify    /v1/me and /healthz req/s + in-process verify µs  --seconds 10 --concurrency 64
//!   login     argon2 logins/s                                   --seconds 10
//!   peers     sessiond vs peer servers (bench/peers/setup.sh first): idle RSS + broadcast
//!             fan-out at each size, and targeted logouts (per-user sockets, open loop); a fresh
//!             process per measurement, rounds interleaved, medians and sessiond ÷ best peer
//!                 --sizes 5000,15000 --rounds 3 --targeted 5000 --per-user 25 --rate 100
//!                 --peers sessiond,node-ws,axum-tuned,fastwebsockets,socketio,python-websockets
//!   revoke-to-resource-server  logout → first 401 at the notes example --revokes 1000 --rate 100
//!   ssf       Shared Signals push: logout → SET at a receiver, and a logout-everyone burst
//!                                 --revokes 500 --rate 50 --burst 5000 --streams 1 --stores sqlite,postgres
//!   --database-url postgres://postgres@127.0.0.1:5432/test  (admin URL; a throwaway DB is made)
//! ```
//!
//! Sockets are held by worker processes (this binary's hidden `worker` scenario, ≤ 9,500
//! sockets each: one process may hold ~20k files here), the server runs as this binary's hidden
//! `server` scenario (exactly `sessiond serve`) so its RSS is its own. Timestamps are
//! CLOCK_MONOTONIC, shared by all processes; latency histograms are HDR; revocations follow an
//! open-loop schedule (send times fixed in advance, no coordinated omission). Server CPU per
//! operation is user + system time from /proc/PID/stat around the measured phase. With
//! `SESSIOND_BENCH_PERF=/tmp/prof`, `everyone` and `peers` also run `perf record -g` on the
//! server for each measured phase (`/tmp/prof.everyone-19000`, `/tmp/prof.sessiond-targeted`…).

mod cluster;
mod common;
mod peers;
mod resource;
mod scenarios;
mod soak;
mod ssf;
mod worker;

use clap::Parser;

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The scenarios (BENCHMARKS.md has what each measures and its results).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Server RSS per idle authenticated socket (--sizes).
    Idle,
    /// Admin logout-everyone: the call to the last socket's frame (--sizes).
    Everyone,
    /// One logout to its socket's frame, with --idle sockets held (--revokes, --rate).
    Revoke,
    /// The same while 8 clients log in flat out.
    RevokeUnderLogin,
    /// Revoke across instances through PostgreSQL NOTIFY (--revokes, --rate, --idle).
    Cluster,
    /// Reconnect storm after a restart (--sizes).
    Churn,
    /// Refreshes/s from pre-minted tokens, SQLite and PostgreSQL (--count, --concurrency).
    Refresh,
    /// The rotation transaction alone, in process (--count).
    RefreshStore,
    /// /v1/me and /healthz req/s, and in-process verification µs (--seconds, --concurrency).
    Verify,
    /// Argon2 logins/s (--seconds).
    Login,
    /// sessiond against the peer servers (bench/peers/setup.sh first), --rounds times, each
    /// measurement in a fresh server process, the servers' order rotated every round: RSS per
    /// idle socket, then one broadcast `logout` (p50, p99, last frame; server CPU per delivered
    /// frame) at each of --sizes (default 5000,15000); and --targeted sockets, --per-user of
    /// them per user, whose users are logged out one by one at --rate/s, open loop (frame −
    /// scheduled send: p50, p99, max; CPU per frame). Tables: median (min–max) per server and
    /// sessiond ÷ the best peer. --peers chooses and orders the servers.
    Peers,
    /// Logout → first 401 at a resource server (the `notes` example) following the feed.
    RevokeToResourceServer,
    /// Shared Signals push: logout → SET at a receiver (--revokes, --rate), and the SETs/s of a
    /// logout-everyone burst (--burst), over --streams push streams, on --stores.
    Ssf,
    /// Sockets under continuous churn (connect, auth, re-auth, logout, reconnect) and a steady
    /// request mix for --seconds (default 600) at --sizes (default 10000): server RSS, open
    /// files, hub registry, denylist and cache sizes at the start, middle and end.
    Soak,
    /// Internal: a socket-holding worker process.
    #[value(hide = true)]
    Worker,
    /// Internal: the server process (exactly `sessiond serve`).
    #[value(hide = true)]
    Server,
}

#[derive(Debug, clap::Parser)]
#[command(name = "sessiond-bench", about = "Drives sessiond (and its peers) over loopback and prints markdown tables")]
pub struct Args {
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Logouts to time (revoke, cluster, revoke-to-resource-server: default 1000; ssf: 500).
    #[arg(long)]
    revokes: Option<usize>,
    /// Logouts per second, open loop (revoke, cluster, revoke-to-resource-server, peers' targeted
    /// logouts: default 100; ssf: 50).
    #[arg(long)]
    rate: Option<f64>,
    /// Live sessions (each of its own user) that one logout-everyone ends (ssf).
    #[arg(long, default_value_t = 5000)]
    pub burst: usize,
    /// SSF push streams, each of its own service credential and receiver path (ssf).
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// Stores to run on, comma separated (ssf).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Store::Sqlite])]
    pub stores: Vec<Store>,
    /// Idle sockets held meanwhile (revoke, cluster, revoke-to-resource-server).
    #[arg(long, default_value_t = 10_000)]
    pub idle: usize,
    /// Socket counts, comma separated (idle, everyone, churn: default 1000,5000,10000,19000;
    /// peers: 5000,15000).
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// Rounds of every measurement (peers); results are medians over them.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Servers to compare, comma separated, in this order (peers): sessiond, node-ws,
    /// axum-tuned, fastwebsockets, socketio, python-websockets.
    #[arg(long, value_delimiter = ',', default_values_t = ["sessiond", "node-ws", "axum-tuned", "fastwebsockets", "socketio", "python-websockets"].map(String::from))]
    pub peers: Vec<String>,
    /// Sockets of the targeted-logout measurement (peers); 0 skips it.
    #[arg(long, default_value_t = 5000)]
    pub targeted: usize,
    /// Sockets per user in the targeted-logout measurement (peers).
    #[arg(long, default_value_t = 25)]
    pub per_user: usize,
    /// Operations (refresh, refresh-store).
    #[arg(long, default_value_t = 20_000)]
    pub count: usize,
    /// Concurrent clients (refresh, verify).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Duration of a timed scenario (verify, login: default 10; soak: 600).
    #[arg(long)]
    seconds: Option<u64>,
    /// Where `peers` writes its SVG charts (default: bench/charts).
    #[arg(long)]
    pub charts: Option<std::path::PathBuf>,
    /// PostgreSQL admin URL; a throwaway database is created in it.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pub database_url: String,
    /// Internal: the arguments of the worker process.
    #[arg(hide = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub rest: Vec<String>,
}

/// A backend the scenario runs on (`--stores`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Store {
    Sqlite,
    /// A throwaway database in `--database-url`.
    Postgres,
}

impl Args {
    /// `--revokes`, defaulting per scenario.
    pub fn revokes(&self) -> usize {
        self.revokes.unwrap_or(if self.scenario == Scenario::Ssf { 500 } else { 1000 })
    }

    /// `--seconds`, defaulting per scenario.
    pub fn seconds(&self) -> u64 {
        self.seconds.unwrap_or(if self.scenario == Scenario::Soak { 600 } else { 10 })
    }

    /// `--sizes`, defaulting per scenario.
    pub fn sizes(&self) -> Vec<usize> {
        let default: &[usize] = match self.scenario {
            Scenario::Peers => &[5000, 15_000],
            Scenario::Soak => &[10_000],
            _ => &[1000, 5000, 10_000, 19_000],
        };
        self.sizes.clone().unwrap_or_else(|| default.to_vec())
    }

    /// `--rate`, defaulting per scenario.
    pub fn rate(&self) -> f64 {
        self.rate.unwrap_or(if self.scenario == Scenario::Ssf { 50.0 } else { 100.0 })
    }
}

fn main() {
    let args = Args::parse();
    // `rest` carries the worker's internal arguments; anywhere else it would swallow a mistyped
    // or unknown flag (a flag this build does not have) without a word.
    if args.scenario != Scenario::Worker && !args.rest.is_empty() {
        eprintln!("sessiond-bench: unexpected arguments {:?} (see --help)", args.rest);
        std::process::exit(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    if args.scenario == Scenario::Server {
        let cli = sessiond::config::Cli::parse_from(["sessiond", "serve"]);
        sessiond::telemetry::init();
        rt.block_on(sessiond::cli::run(cli)).expect("server");
        return;
    }
    if args.scenario == Scenario::Worker {
        let (url, file, mode) = (args.rest[0].clone(), args.rest[1].clone(), args.rest[2].clone());
        let framing = common::Framing::parse(args.rest.get(3).map_or("plain", String::as_str));
        rt.block_on(worker::run(url, file, mode, framing));
        return;
    }
    let out = rt.block_on(async {
        match args.scenario {
            Scenario::Idle => scenarios::idle(&args).await,
            Scenario::Everyone => scenarios::everyone(&args).await,
            Scenario::Revoke => scenarios::revoke(&args, false).await,
            Scenario::RevokeUnderLogin => scenarios::revoke(&args, true).await,
            Scenario::Cluster => cluster::run(&args).await,
            Scenario::Churn => scenarios::churn(&args).await,
            Scenario::Refresh => scenarios::refresh(&args).await,
            Scenario::RefreshStore => scenarios::refresh_store(&args).await,
            Scenario::Verify => scenarios::verify(&args).await,
            Scenario::Login => scenarios::login(&args).await,
            Scenario::Peers => peers::run(&args).await,
            Scenario::RevokeToResourceServer => resource::run(&args).await,
            Scenario::Ssf => ssf::run(&args).await,
            Scenario::Soak => soak::run(&args).await,
            Scenario::Worker | Scenario::Server => unreachable!("handled above"),
        }
    });
    println!("\n## {:?}\n", args.scenario);
    for line in out {
        println!("{line}");
    }
}
