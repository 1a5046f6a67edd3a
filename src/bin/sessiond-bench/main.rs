//! sessiond-bench: starts sessiond itself (as child processes), drives it over loopback with
//! bounded counts and time, stops by itself, and prints markdown tables (BENCHMARKS.md).
//!
//! ```text
//! cargo run --release --bin sessiond-bench -- <scenario> [flags]
//!   idle      server RSS per idle authenticated socket          --sizes 1000,5000,10000,19000
//!   everyone  admin logout-everyone: call → last socket's frame --sizes 1000,5000,10000,19000
//!   revoke    one logout → its socket's frame, N idle held      --revokes 1000 --rate 100 --idle 10000
//!   revoke-under-login   the same while 8 clients log in flat out
//!   cluster   revoke across instances (PostgreSQL NOTIFY)       --revokes 1000 --rate 100 --idle 10000
//!   churn     reconnect storm after a restart                   --sizes 19000
//!   refresh   refreshes/s from pre-minted tokens, SQLite + PG   --count 20000 --concurrency 64
//!   refresh-store  the rotation transaction alone, in process   --count 5000
//!   verify    /v1/me and /healthz req/s + in-process verify µs  --seconds 10 --concurrency 64
//!   login     argon2 logins/s                                   --seconds 10
//!   peers     idle + everyone vs Node ws, Socket.IO, Python websockets, fastwebsockets
//!                                                               --sizes 5000 (bench/peers/setup.sh first)
//!   --database-url postgres://postgres@127.0.0.1:5432/test  (admin URL; a throwaway DB is made)
//! ```
//!
//! Sockets are held by worker processes (this binary's hidden `worker` subcommand, ≤ 9,500
//! sockets each: one process may hold ~20k files here), the server runs as this binary's hidden
//! `server` subcommand (exactly `sessiond serve`) so its RSS is its own. Timestamps are
//! CLOCK_MONOTONIC, shared by all processes; latency histograms are HDR; revocations follow an
//! open-loop schedule (send times fixed in advance, no coordinated omission).

mod cluster;
mod common;
mod scenarios;
mod worker;

use clap::Parser;

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Args {
    pub scenario: String,
    pub rest: Vec<String>,
    pub revokes: usize,
    pub rate: f64,
    pub idle: usize,
    pub sizes: Vec<usize>,
    pub count: usize,
    pub concurrency: usize,
    pub seconds: u64,
    pub database_url: String,
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let scenario = it.next().unwrap_or_else(|| "help".into());
    let mut a = Args {
        scenario,
        rest: Vec::new(),
        revokes: 1000,
        rate: 100.0,
        idle: 10_000,
        sizes: vec![1000, 5000, 10_000, 19_000],
        count: 20_000,
        concurrency: 64,
        seconds: 10,
        database_url: "postgres://postgres@127.0.0.1:5432/test".into(),
    };
    if a.scenario == "worker" || a.scenario == "server" {
        a.rest = it.collect();
        return a;
    }
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_default();
        match flag.as_str() {
            "--revokes" => a.revokes = v.parse().expect("--revokes N"),
            "--rate" => a.rate = v.parse().expect("--rate R"),
            "--idle" => a.idle = v.parse().expect("--idle N"),
            "--sizes" => a.sizes = v.split(',').map(|s| s.trim().parse().expect("--sizes a,b,c")).collect(),
            "--count" => a.count = v.parse().expect("--count N"),
            "--concurrency" => a.concurrency = v.parse().expect("--concurrency N"),
            "--seconds" => a.seconds = v.parse().expect("--seconds N"),
            "--database-url" => a.database_url = v,
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn main() {
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    if args.scenario == "server" {
        let cli = sessiond::config::Cli::parse_from(["sessiond", "serve"]);
        sessiond::telemetry::init();
        rt.block_on(sessiond::cli::run(cli)).expect("server");
        return;
    }
    if args.scenario == "worker" {
        let (url, file, mode) = (args.rest[0].clone(), args.rest[1].clone(), args.rest[2].clone());
        let framing = common::Framing::parse(args.rest.get(3).map_or("plain", String::as_str));
        rt.block_on(worker::run(url, file, mode, framing));
        return;
    }
    let out = rt.block_on(async {
        match args.scenario.as_str() {
            "idle" => scenarios::idle(&args).await,
            "everyone" => scenarios::everyone(&args).await,
            "revoke" => scenarios::revoke(&args, false).await,
            "revoke-under-login" => scenarios::revoke(&args, true).await,
            "cluster" => cluster::run(&args).await,
            "churn" => scenarios::churn(&args).await,
            "refresh" => scenarios::refresh(&args).await,
            "refresh-store" => scenarios::refresh_store(&args).await,
            "verify" => scenarios::verify(&args).await,
            "login" => scenarios::login(&args).await,
            "peers" => scenarios::peers(&args).await,
            _ => {
                eprintln!("usage: sessiond-bench idle|everyone|revoke|revoke-under-login|cluster|churn|refresh|verify|login [flags] (see the source's header)");
                std::process::exit(2);
            }
        }
    });
    println!("\n## {}\n", args.scenario);
    for line in out {
        println!("{line}");
    }
}
