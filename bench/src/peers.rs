//! `peers`: sessiond against peer servers (bench/peers/) that speak the same socket protocol
//! with nothing behind it: no token verification, no database, no revocation.
//!
//! Every measurement gets a fresh server process; each round runs every measurement on every
//! server, the servers' order rotated by one each round so that order effects (a warm page
//! cache, a busy neighbour) spread over all of them. The tables give the median over the rounds
//! (min–max beside it) and sessiond ÷ the best peer (every metric is lower-is-better).
//!
//! - idle + fan-out, at each of `--sizes`: server RSS per idle authenticated socket, then one
//!   broadcast `logout` to all (sessiond: `POST /v1/admin/logout-everyone`; peers:
//!   `GET /broadcast`): p50, p99 and last frame in ms after the request was sent, and server CPU
//!   per delivered frame.
//! - targeted, `--targeted` sockets: `--per-user` sockets per user (sessiond: one session per
//!   user, its access token on all of them), users logged out one at a time at `--rate`/s on an
//!   open-loop schedule (sessiond: `POST /v1/auth/logout` with the user's bearer token; peers:
//!   `GET /logout?user=U`, the peers' tokens being `u{user}-{i}`). Latency: each socket's frame
//!   − the scheduled send time of its user's logout; server CPU per delivered frame over the
//!   phase.
//!
//! Server CPU is counted from just before the first request until the server has gone quiet
//! after the last frame arrived ([`cpu_us_settled`]), so it includes the close handshakes and
//! cleanup that some servers (Python `websockets`) defer past the frames.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::scenarios::{open_loop, Db, PER_WORKER};
use crate::Args;

/// A peer server process; killed on drop.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn peers_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/peers"))
}

/// The command that runs peer `name`, its WebSocket path and framing; or why it cannot run.
fn peer_command(name: &str) -> Result<(Command, &'static str, Framing), String> {
    let dir = peers_dir();
    let node = |script: &str, module: &str| {
        if !dir.join("node_modules").join(module).exists() {
            return Err(format!("not installed (run bench/peers/setup.sh: npm `{module}`)"));
        }
        let mut c = Command::new("node");
        c.arg(dir.join(script));
        Ok(c)
    };
    let cargo_bin = |bin: &str| {
        let path = dir.join("fastwebsockets/target/release").join(bin);
        if !path.exists() {
            return Err(format!(
                "not installed (run bench/peers/setup.sh: cargo build of bench/peers/fastwebsockets, bin {bin})"
            ));
        }
        Ok(Command::new(path))
    };
    Ok(match name {
        "node-ws" => (node("node-ws.mjs", "ws")?, "/", Framing::Plain),
        "socketio" => (node("socketio.mjs", "socket.io")?, "/socket.io/?EIO=4&transport=websocket", Framing::EngineIo),
        "fastwebsockets" => (cargo_bin("fastwebsockets-peer")?, "/", Framing::Plain),
        "axum-tuned" => (cargo_bin("axum-peer")?, "/", Framing::Plain),
        "python-websockets" => {
            let ok = Command::new("python3").args(["-c", "import websockets"]).status();
            if !ok.is_ok_and(|s| s.success()) {
                return Err("not installed (run bench/peers/setup.sh: pip `websockets`)".into());
            }
            let mut c = Command::new("python3");
            c.arg(dir.join("py_websockets.py"));
            (c, "/", Framing::Plain)
        }
        other => return Err(format!("unknown peer {other}")),
    })
}

/// A server under test, fresh for one measurement: sessiond (a SQLite database of its own,
/// sessions minted straight into it) or a peer.
struct Contender {
    name: String,
    pid: u32,
    /// `http://127.0.0.1:PORT`
    base: String,
    ws: String,
    framing: Framing,
    kind: Kind,
    /// Holds sessiond's database and the workers' token files; removed after the server stops.
    dir: TempDir,
}

enum Kind {
    Sessiond { minter: Box<Minter>, _server: Server },
    Peer { _process: Peer },
}

impl Contender {
    async fn start(name: &str, args: &Args) -> Result<Contender, String> {
        let dir = TempDir::new();
        let port = free_port();
        if name == "sessiond" {
            let db = Db::new(args, &dir, false).await;
            let server = Server::start(&db.url, port, &[]).await;
            let minter = Minter::new(&db.url, &server.base()).await;
            let (pid, base, ws) = (server.child.id(), server.base(), server.ws());
            let kind = Kind::Sessiond { minter: Box::new(minter), _server: server };
            return Ok(Contender { name: name.to_string(), pid, base, ws, framing: Framing::Plain, kind, dir });
        }
        let (mut cmd, path, framing) = peer_command(name)?;
        let child = cmd
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("not installed ({e})"))?;
        let c = Contender {
            name: name.to_string(),
            pid: child.id(),
            base: format!("http://127.0.0.1:{port}"),
            ws: format!("ws://127.0.0.1:{port}{path}"),
            framing,
            kind: Kind::Peer { _process: Peer(child) },
            dir,
        };
        if !ready_within(&c.base, Duration::from_secs(20)).await {
            return Err("did not start".into());
        }
        Ok(c)
    }

    /// `n` socket tokens for the idle + fan-out measurement (sessiond: `n` sessions of the one
    /// bench user; peers: each token a user of its own).
    async fn idle_tokens(&self, n: usize) -> Vec<String> {
        match &self.kind {
            Kind::Sessiond { minter, .. } => minter.mint_users(n).await.into_iter().map(|m| m.access).collect(),
            Kind::Peer { .. } => (0..n).map(|i| format!("peer-token-{i}")).collect(),
        }
    }

    /// `users` users of `per_user` sockets each: the sockets' tokens (user by user) and, per
    /// user, what its logout request carries (sessiond: the one session's access token; peers:
    /// the user's name).
    async fn user_tokens(&self, users: usize, per_user: usize) -> (Vec<String>, Vec<String>) {
        let keys: Vec<String> = match &self.kind {
            Kind::Sessiond { minter, .. } => minter.mint_users(users).await.into_iter().map(|m| m.access).collect(),
            Kind::Peer { .. } => (0..users).map(|u| format!("u{u}")).collect(),
        };
        let tokens = keys
            .iter()
            .flat_map(|k| {
                (0..per_user).map(move |i| match self.kind {
                    Kind::Sessiond { .. } => k.clone(),
                    Kind::Peer { .. } => format!("{k}-{i}"),
                })
            })
            .collect();
        (tokens, keys)
    }

    /// The request that logs out every socket.
    fn broadcast(&self, client: &reqwest::Client) -> reqwest::RequestBuilder {
        match &self.kind {
            Kind::Sessiond { minter, .. } => minter.logout_everyone(client, &self.base),
            Kind::Peer { .. } => client.get(format!("{}/broadcast", self.base)),
        }
    }

    /// The request that logs out one user's sockets (`key` from [`Contender::user_tokens`]).
    fn logout(&self, client: &reqwest::Client, key: &str) -> reqwest::RequestBuilder {
        match &self.kind {
            Kind::Sessiond { .. } => client.post(format!("{}/v1/auth/logout", self.base)).bearer_auth(key),
            Kind::Peer { .. } => client.get(format!("{}/logout?user={key}", self.base)),
        }
    }

    /// A few plain requests first, so the HTTP path's one-time allocations are not counted as
    /// the sockets' memory.
    async fn warm_up(&self) {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let path = if matches!(self.kind, Kind::Sessiond { .. }) { "/healthz" } else { "/readyz" };
        for _ in 0..20 {
            let _ = client.get(format!("{}{path}", self.base)).send().await;
        }
    }
}

/// Quantile `p` of sorted values (nearest rank); NaN if empty.
fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// One measurement's result: sorted per-socket times (ms) and what the server spent.
struct Run {
    /// Fan-out: ms after the broadcast request was sent; targeted: frame − scheduled send.
    times_ms: Vec<f64>,
    /// Frames expected.
    expected: usize,
    /// Server CPU µs per delivered frame over the phase.
    cpu_per_frame: f64,
    /// Fan-out only: server RSS per idle socket, KiB.
    kib_per_socket: Option<f64>,
}

impl Run {
    fn new(mut times_ms: Vec<f64>, expected: usize, cpu_us: u64, kib_per_socket: Option<f64>) -> Run {
        times_ms.sort_by(f64::total_cmp);
        let cpu_per_frame = cpu_us as f64 / times_ms.len().max(1) as f64;
        Run { times_ms, expected, cpu_per_frame, kib_per_socket }
    }

    fn complete(&self) -> bool {
        self.times_ms.len() == self.expected
    }

    fn last(&self) -> f64 {
        self.times_ms.last().copied().unwrap_or(f64::NAN)
    }
}

/// Idle + fan-out: `n` authenticated sockets held (RSS per socket), then one broadcast.
async fn fanout(c: &Contender, n: usize) -> Run {
    let tokens = c.idle_tokens(n).await;
    c.warm_up().await;
    let before = rss_of(c.pid);
    let mut workers = spawn_workers_framed(&c.ws, &tokens, PER_WORKER, &c.dir, false, c.framing);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kib = (rss_of(c.pid) as f64 - before as f64) / n as f64;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let perf = Perf::start(c.pid, &format!("{}-fanout-{n}", c.name)).await;
    let cpu0 = cpu_us(c.pid);
    let t0 = mono_ns();
    let r = c.broadcast(&client).send().await.unwrap();
    assert!(r.status().is_success(), "broadcast: {}", r.status());
    let arrivals = await_logouts(&mut workers, n, Duration::from_secs(60)).await;
    let cpu = cpu_us_settled(c.pid).await - cpu0;
    drop(perf);
    let times = arrivals.iter().map(|&(_, t)| t.saturating_sub(t0) as f64 / 1e6).collect();
    Run::new(times, n, cpu, Some(kib))
}

/// Targeted: `n` sockets, `per_user` per user; the users logged out one by one at `rate`/s.
async fn targeted(c: &Contender, n: usize, per_user: usize, rate: f64) -> Run {
    let users = n / per_user;
    let n = users * per_user;
    let (tokens, keys) = c.user_tokens(users, per_user).await;
    let mut workers = spawn_workers_framed(&c.ws, &tokens, PER_WORKER, &c.dir, false, c.framing);
    let perf = Perf::start(c.pid, &format!("{}-targeted", c.name)).await;
    let cpu0 = cpu_us(c.pid);
    let times = open_loop(users, rate, |client, u| c.logout(client, &keys[u])).await;
    let arrivals = await_logouts(&mut workers, n, Duration::from_secs(20)).await;
    let cpu = cpu_us_settled(c.pid).await - cpu0;
    drop(perf);
    let latencies =
        arrivals.iter().map(|&(i, t)| t.saturating_sub(times[i / per_user].scheduled) as f64 / 1e6).collect();
    Run::new(latencies, n, cpu, None)
}

/// One metric's samples: per server (in `--peers` order), one value per round.
struct Metric {
    title: String,
    samples: Vec<(String, Vec<f64>)>,
    /// Servers with a run that did not deliver every frame.
    short: Vec<String>,
}

/// Median, min and max of some samples.
fn summary(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let median = if s.len() % 2 == 1 { s[s.len() / 2] } else { (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0 };
    (median, s[0], s[s.len() - 1])
}

/// A value with 2–3 significant digits' worth of decimals.
fn num(v: f64) -> String {
    match v.abs() {
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

impl Metric {
    fn record(&mut self, server: &str, value: f64, complete: bool) {
        match self.samples.iter_mut().find(|(s, _)| s == server) {
            Some((_, v)) => v.push(value),
            None => self.samples.push((server.to_string(), vec![value])),
        }
        if !complete && !self.short.iter().any(|s| s == server) {
            self.short.push(server.to_string());
        }
    }

    /// sessiond's median, the best peer and its median.
    fn headline(&self) -> (Option<f64>, Option<(&str, f64)>) {
        let mut sessiond = None;
        let mut best: Option<(&str, f64)> = None;
        for (server, v) in &self.samples {
            let (m, _, _) = summary(v);
            if server == "sessiond" {
                sessiond = Some(m);
            } else if best.is_none_or(|(_, b)| m < b) {
                best = Some((server, m));
            }
        }
        (sessiond, best)
    }

    fn table(&self, order: &[String]) -> Vec<String> {
        let (_, best) = self.headline();
        let mut out = vec![
            format!("**{}**", self.title),
            String::new(),
            "| server | median | min–max | rounds | ÷ best peer |".into(),
            "|---|---|---|---|---|".into(),
        ];
        for name in order {
            let Some((_, v)) = self.samples.iter().find(|(s, _)| s == name) else { continue };
            let (m, lo, hi) = summary(v);
            let ratio =
                best.map_or(
                    "–".into(),
                    |(b, bm)| {
                        if b == name {
                            "1.00 (best peer)".into()
                        } else {
                            format!("{:.2}", m / bm)
                        }
                    },
                );
            let short = if self.short.contains(name) { " (a run missed frames)" } else { "" };
            out.push(format!("| {name}{short} | {} | {}–{} | {} | {ratio} |", num(m), num(lo), num(hi), v.len()));
        }
        out.push(String::new());
        out
    }
}

/// All metrics, in table order.
struct Metrics(Vec<Metric>);

impl Metrics {
    fn new(sizes: &[usize], targeted: Option<(usize, usize)>) -> Metrics {
        let mut titles = Vec::new();
        for (what, unit) in [
            ("idle: server RSS per idle socket", "KiB"),
            ("fan-out: p99 frame", "ms after the broadcast request"),
            ("fan-out: last frame", "ms after the broadcast request"),
            ("fan-out: server CPU per delivered logout", "µs"),
        ] {
            titles.extend(sizes.iter().map(|n| format!("{what} ({unit}), {n} sockets")));
        }
        if let Some((n, per_user)) = targeted {
            let of = format!("{n} sockets, {per_user} per user");
            titles.push(format!("targeted: p99 frame (ms after the logout's scheduled send), {of}"));
            titles.push(format!("targeted: server CPU per delivered logout (µs), {of}"));
        }
        Metrics(titles.into_iter().map(|title| Metric { title, samples: Vec::new(), short: Vec::new() }).collect())
    }

    /// The metric whose title starts with `what` and is about `n` sockets.
    fn get(&mut self, what: &str, n: usize) -> &mut Metric {
        let tag = format!(", {n} sockets");
        self.0.iter_mut().find(|m| m.title.starts_with(what) && m.title.contains(&tag)).expect("a known metric")
    }
}

/// The runs a chart is drawn from: per server, (the value that picks the median run, its times).
type ChartRuns = Vec<(String, Vec<(f64, Vec<f64>)>)>;

fn keep_for_chart(runs: &mut ChartRuns, server: &str, key: f64, times: Vec<f64>) {
    match runs.iter_mut().find(|(s, _)| s == server) {
        Some((_, v)) => v.push((key, times)),
        None => runs.push((server.to_string(), vec![(key, times)])),
    }
}

/// Per server, the run whose key is the median of its rounds (the upper one of two).
fn median_runs(runs: &ChartRuns) -> Vec<(String, Vec<f64>)> {
    runs.iter()
        .map(|(server, v)| {
            let mut v: Vec<&(f64, Vec<f64>)> = v.iter().collect();
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            (server.clone(), v[v.len() / 2].1.clone())
        })
        .collect()
}

/// The measurements of one round, in order.
#[derive(Clone, Copy)]
enum Measurement {
    Fanout(usize),
    Targeted(usize),
}

/// The scenario: every round runs `plan` on every server (the module's doc has what and how).
pub async fn run(args: &Args) -> Vec<String> {
    let started = Instant::now();
    let sizes = args.sizes();
    let per_user = args.per_user.max(1);
    let targeted_n = (args.targeted / per_user) * per_user;
    let mut out = Vec::new();
    let mut servers = Vec::new();
    for name in &args.peers {
        let available = if name == "sessiond" { Ok(()) } else { peer_command(name).map(drop) };
        match available {
            Ok(()) => servers.push(name.clone()),
            Err(why) => {
                eprintln!("peers: skipping {name}: {why}");
                out.push(format!("- skipped {name}: {why}"));
            }
        }
    }
    let mut plan: Vec<Measurement> = sizes.iter().map(|&n| Measurement::Fanout(n)).collect();
    if targeted_n > 0 {
        plan.push(Measurement::Targeted(targeted_n));
    }
    let mut metrics = Metrics::new(&sizes, (targeted_n > 0).then_some((targeted_n, per_user)));
    let mut fanout_charts: Vec<ChartRuns> = vec![Vec::new(); sizes.len()];
    let mut targeted_chart: ChartRuns = Vec::new();
    let mut raw = vec![
        "| round | server | measurement | RSS per idle socket (KiB) | p50 (ms) | p99 (ms) | last frame, or max (ms) | CPU per delivered logout (µs) | delivered |".to_string(),
        "|---|---|---|---|---|---|---|---|---|".into(),
    ];
    for round in 0..args.rounds {
        for &m in &plan {
            for k in 0..servers.len() {
                let name = &servers[(round + k) % servers.len()];
                let c = match Contender::start(name, args).await {
                    Ok(c) => c,
                    Err(why) => {
                        eprintln!("peers: round {} {name}: {why}", round + 1);
                        out.push(format!("- round {}: {name} {why}", round + 1));
                        continue;
                    }
                };
                let (label, r) = match m {
                    Measurement::Fanout(n) => (format!("fan-out {n}"), fanout(&c, n).await),
                    Measurement::Targeted(n) => {
                        (format!("targeted {n} ({per_user}/user)"), targeted(&c, n, per_user, args.rate()).await)
                    }
                };
                drop(c);
                let (p50, p99, last) = (quantile(&r.times_ms, 0.5), quantile(&r.times_ms, 0.99), r.last());
                let complete = r.complete();
                match m {
                    Measurement::Fanout(n) => {
                        metrics.get("idle", n).record(name, r.kib_per_socket.unwrap_or(f64::NAN), true);
                        metrics.get("fan-out: p99", n).record(name, p99, complete);
                        metrics.get("fan-out: last", n).record(name, last, complete);
                        metrics.get("fan-out: server CPU", n).record(name, r.cpu_per_frame, complete);
                        let i = sizes.iter().position(|&s| s == n).unwrap();
                        keep_for_chart(&mut fanout_charts[i], name, last, r.times_ms.clone());
                    }
                    Measurement::Targeted(n) => {
                        metrics.get("targeted: p99", n).record(name, p99, complete);
                        metrics.get("targeted: server CPU", n).record(name, r.cpu_per_frame, complete);
                        keep_for_chart(&mut targeted_chart, name, p99, r.times_ms.clone());
                    }
                }
                raw.push(format!(
                    "| {} | {name} | {label} | {} | {} | {} | {} | {} | {} of {} |",
                    round + 1,
                    r.kib_per_socket.map_or("".into(), num),
                    num(p50),
                    num(p99),
                    num(last),
                    num(r.cpu_per_frame),
                    r.times_ms.len(),
                    r.expected
                ));
                eprintln!("{}", raw.last().unwrap());
            }
        }
    }
    out.push(format!(
        "{} round(s), a fresh server process per measurement, the servers' order rotated each round; \
         medians (min–max); every metric lower-is-better; \"÷ best peer\" = this server's median ÷ the best \
         peer's median. Targeted logouts: {} users at {}/s, open loop.",
        args.rounds,
        targeted_n / per_user,
        args.rate()
    ));
    out.push(String::new());
    out.push("| metric | sessiond | best peer | sessiond ÷ best peer |".into());
    out.push("|---|---|---|---|".into());
    for m in &metrics.0 {
        let (s, best) = m.headline();
        let (Some(s), Some((b, bm))) = (s, best) else { continue };
        out.push(format!("| {} | {} | {b}: {} | {:.2} |", m.title, num(s), num(bm), s / bm));
    }
    out.push(String::new());
    for m in &metrics.0 {
        out.extend(m.table(&servers));
    }
    out.push("Every run (also printed to stderr as it finished):".into());
    out.push(String::new());
    out.extend(raw);
    out.push(String::new());
    let charts = args.charts.clone().unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/charts")));
    let _ = std::fs::create_dir_all(&charts);
    let mut drawn = Vec::new();
    for (&n, runs) in sizes.iter().zip(&fanout_charts) {
        let title = format!("logout broadcast to {n} sockets: share delivered over time");
        drawn.push((charts.join(format!("peers-broadcast-{n}.svg")), title, "ms after the call", median_runs(runs)));
    }
    if targeted_n > 0 {
        let title = format!("targeted logouts, {targeted_n} sockets ({per_user} per user), {}/s", args.rate());
        let x = "ms after the logout's scheduled send";
        drawn.push((charts.join(format!("peers-targeted-{targeted_n}.svg")), title, x, median_runs(&targeted_chart)));
    }
    out.push("Charts (per server its median run: by last frame for a broadcast, by p99 for targeted):".into());
    for (path, title, x, series) in drawn {
        match write_cdf_chart(&path, &title, x, &series) {
            Ok(()) => out.push(format!("- {}", path.display())),
            Err(e) => out.push(format!("- {} failed: {e}", path.display())),
        }
    }
    out.push(format!("\n(ran in {:.1} min)", started.elapsed().as_secs_f64() / 60.0));
    out
}

/// Writes an SVG chart: for each server, the share of sockets that got the `logout` frame
/// against milliseconds (a CDF of `series`' times).
fn write_cdf_chart(path: &Path, title: &str, x_desc: &str, series: &[(String, Vec<f64>)]) -> Result<(), String> {
    use plotters::prelude::*;
    let max_ms = series.iter().flat_map(|(_, v)| v.iter().copied()).fold(1.0_f64, f64::max) * 1.05;
    let root = SVGBackend::new(path, (760, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_ms, 0.0..100.0)
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().x_desc(x_desc).y_desc("% of sockets with the frame").draw().map_err(|e| e.to_string())?;
    let colors = [RED, BLUE, RGBColor(230, 130, 0), GREEN, MAGENTA, CYAN];
    for (i, (name, sorted)) in series.iter().enumerate() {
        let len = sorted.len().max(1) as f64;
        // At most ~400 points per line keeps the SVG small.
        let step = (sorted.len() / 400).max(1);
        let points: Vec<(f64, f64)> = sorted
            .iter()
            .enumerate()
            .filter(|(k, _)| k % step == 0 || *k + 1 == sorted.len())
            .map(|(k, &t)| (t, (k + 1) as f64 * 100.0 / len))
            .collect();
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}
