//! Shared pieces of the bench tool: monotonic clock, the server child process, token minting,
//! socket-holding worker processes, and result tables.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use sessiond::clock::{ms, Clock};
use sessiond::store::{NewRefresh, NewSession, Store};
use sessiond::tokens::jwt::Keys;
use sessiond::tokens::refresh::RefreshToken;

/// CLOCK_MONOTONIC in nanoseconds: system-wide, so comparable across this tool's processes.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `perf record -g` of one process for a measured phase, when `SESSIOND_BENCH_PERF` is set to
/// a path prefix: the profile goes to `PREFIX.LABEL` (then `perf report -i PREFIX.LABEL`);
/// nothing otherwise. Stops (SIGINT) when dropped.
pub struct Perf(Option<std::process::Child>);

impl Perf {
    pub async fn start(pid: u32, label: &str) -> Perf {
        let Some(prefix) = std::env::var("SESSIOND_BENCH_PERF").ok() else { return Perf(None) };
        let child = std::process::Command::new("perf")
            .args(["record", "-g", "-F", "999", "-p", &pid.to_string(), "-o"])
            .arg(format!("{prefix}.{label}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| eprintln!("perf record did not start: {e}"))
            .ok();
        // perf attaches within a few ms; give it time before the phase starts.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Perf(child)
    }
}

impl Drop for Perf {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
    }
}

/// Unix time in seconds (to compare with the server's timestamp metrics).
pub fn unix_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A temp directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let d = std::env::temp_dir().join(format!("sessiond-bench-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One issuer for every instance of a run (tokens from one instance work on the others).
pub const ISSUER: &str = "http://sessiond.bench";
pub const ADMIN_EMAIL: &str = "bench-admin@example.com";
pub const ADMIN_PASSWORD: &str = "bench admin password";

/// A sessiond server in a child process (this binary's hidden `server` subcommand, which runs
/// exactly `sessiond serve`), so its memory can be measured alone.
pub struct Server {
    pub child: Child,
    pub port: u16,
}

impl Server {
    pub async fn start(database_url: &str, port: u16, extra: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.arg("server")
            .env("DATABASE_URL", database_url)
            .env("SESSIOND_LISTEN", format!("127.0.0.1:{port}"))
            .env("SESSIOND_ISSUER", ISSUER)
            .env("SESSIOND_ACCESS_TTL", "30m")
            .env("SESSIOND_WS_MAX_SOCKETS_PER_USER", "1000000")
            // Every bench client comes from 127.0.0.1: the per-IP caps would throttle the
            // load generator itself (a reconnect storm is thousands of unauthenticated sockets).
            .env("SESSIOND_WS_MAX_UNAUTHENTICATED_PER_IP", "1000000")
            .env("SESSIOND_REGISTER_PER_IP_PER_HOUR", "0")
            .env("SESSIOND_ADMIN_EMAIL", ADMIN_EMAIL)
            .env("SESSIOND_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("server child starts");
        let s = Server { child, port };
        s.wait_ready().await;
        s
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ws(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/ws", self.port)
    }

    pub async fn wait_ready(&self) {
        assert!(ready_within(&self.base(), Duration::from_secs(60)).await, "server not ready");
    }

    /// Resident set size of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_of(self.child.id())
    }

    /// SIGTERM, then wait for the exit (bounded).
    /// `sessiond_ws_last_logout_written_timestamp_seconds` from `/metrics`: when the server wrote
    /// its last `logout` frame (Unix seconds), if it has written one.
    pub async fn last_logout_written(&self) -> Option<f64> {
        let client = reqwest::Client::builder().no_proxy().build().ok()?;
        let text = client.get(format!("{}/metrics", self.base())).send().await.ok()?.text().await.ok()?;
        let line = text.lines().find(|l| l.starts_with("sessiond_ws_last_logout_written_timestamp_seconds "))?;
        line.split_whitespace().nth(1)?.parse().ok().filter(|t: &f64| *t > 0.0)
    }

    pub fn stop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `{base}/readyz` until it answers 200; false if it has not within `timeout`.
pub async fn ready_within(base: &str, timeout: Duration) -> bool {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        let ok = client.get(format!("{base}/readyz")).send().await.map(|r| r.status().as_u16() == 200);
        if ok.unwrap_or(false) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Mints sessions straight in the database with the server's own keys (the bench measures
/// sockets and revocation, not argon2).
pub struct Minter {
    pub store: Store,
    keys: Keys,
    clock: Clock,
    user_id: String,
    admin_access: String,
}

/// One minted session.
#[derive(Clone)]
pub struct Minted {
    pub access: String,
    pub refresh: String,
    /// The session's id (the access token's `sid`).
    pub session_id: String,
}

impl Minter {
    pub async fn new(database_url: &str, base: &str) -> Minter {
        Minter::with_issuer(database_url, base, ISSUER).await
    }

    /// For a server whose `--issuer` is not [`ISSUER`].
    pub async fn with_issuer(database_url: &str, base: &str, issuer: &str) -> Minter {
        let store = Store::connect(database_url).await.unwrap();
        let keys = Keys::new(issuer, "sessiond", Duration::from_secs(1800));
        let clock = Clock::system();
        keys.reload(&store, clock.now_ms()).await.unwrap();
        let user_id = uuid::Uuid::now_v7().to_string();
        let email = format!("bench-{}@example.com", uuid::Uuid::new_v4().simple());
        store.create_user(&user_id, &email, "$argon2id$unused", false, clock.now_ms()).await.unwrap();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let r: serde_json::Value = client
            .post(format!("{base}/v1/auth/login"))
            .json(&serde_json::json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let admin_access = r["access_token"].as_str().expect("admin login").to_string();
        Minter { store, keys, clock, user_id, admin_access }
    }

    /// The admin's `POST /v1/admin/logout-everyone` to the server at `base`.
    pub fn logout_everyone(&self, client: &reqwest::Client, base: &str) -> reqwest::RequestBuilder {
        client.post(format!("{base}/v1/admin/logout-everyone")).bearer_auth(&self.admin_access)
    }

    /// `n` sessions of the one bench user.
    pub async fn mint(&self, n: usize) -> Vec<Minted> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.mint_for(&self.user_id).await);
        }
        out
    }

    /// `n` sessions, each of a new user of its own (SSF pushes SETs about one user one at a
    /// time, so one user's thousand sessions would measure that ordering, not the pipeline).
    pub async fn mint_users(&self, n: usize) -> Vec<Minted> {
        use futures::StreamExt;
        futures::stream::iter(0..n)
            .map(|_| async move {
                let user_id = uuid::Uuid::now_v7().to_string();
                let email = format!("bench-{}@example.com", uuid::Uuid::new_v4().simple());
                self.store.create_user(&user_id, &email, "$argon2id$unused", false, self.clock.now_ms()).await.unwrap();
                self.mint_for(&user_id).await
            })
            .buffered(8)
            .collect()
            .await
    }

    /// One session of `user_id`, with its access token.
    async fn mint_for(&self, user_id: &str) -> Minted {
        let token = RefreshToken::generate();
        let now = self.clock.now_ms();
        let s = self
            .store
            .create_session(NewSession {
                id: uuid::Uuid::now_v7().to_string(),
                user_id: user_id.to_string(),
                device_name: Some("bench".into()),
                user_agent: None,
                ip: None,
                now,
                idle_ttl: ms(Duration::from_secs(86400)),
                max_age: ms(Duration::from_secs(86400)),
                access_ttl: ms(Duration::from_secs(1800)),
                refresh: NewRefresh { id: uuid::Uuid::now_v7().to_string(), hash: token.digest() },
                credential_version: 0,
            })
            .await
            .unwrap()
            .expect("the bench user is enabled and its credential unchanged")
            .1;
        let (access, _) = self.keys.issue(user_id, &s.id, vec![], now, s.access_expires_at).unwrap();
        Minted { access, refresh: token.as_str().to_string(), session_id: s.id }
    }
}

/// How a worker's sockets carry the hub protocol: plain WebSocket text frames, or Socket.IO
/// events (an Engine.IO v4 client over the WebSocket transport).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Plain,
    EngineIo,
}

impl Framing {
    /// The worker subcommand's argument.
    pub fn arg(self) -> &'static str {
        match self {
            Framing::Plain => "plain",
            Framing::EngineIo => "engine-io",
        }
    }

    pub fn parse(arg: &str) -> Framing {
        match arg {
            "engine-io" => Framing::EngineIo,
            _ => Framing::Plain,
        }
    }
}

/// A worker process holding authenticated sockets (this binary's hidden `worker` subcommand).
pub struct Worker {
    /// The index of its first socket among all the tokens of [`spawn_workers_framed`].
    first: usize,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    /// Opens one socket per token at `url`, plain framing; `wait_ready` says when all are
    /// authenticated.
    pub fn spawn(url: &str, tokens: &[String], dir: &TempDir, reconnect: bool) -> Worker {
        Worker::spawn_framed(url, tokens, dir, reconnect, Framing::Plain)
    }

    pub fn spawn_framed(url: &str, tokens: &[String], dir: &TempDir, reconnect: bool, framing: Framing) -> Worker {
        let file = dir.0.join(format!("tokens-{}", uuid::Uuid::new_v4().simple()));
        std::fs::write(&file, tokens.join("\n")).unwrap();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        let mode = if reconnect { "reconnect" } else { "once" };
        cmd.args(["worker", url, file.to_str().unwrap(), mode, framing.arg()]);
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Worker { first: 0, child, stdin, stdout }
    }

    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_string()
    }

    /// Waits for `ready <ok> <failed>`.
    pub fn wait_ready(&mut self) -> (usize, usize) {
        let line = self.read_line();
        let mut it = line.split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0));
        (it.next().unwrap_or(0), it.next().unwrap_or(0))
    }

    /// Asks for the recorded events (`logout` frames, or re-authentications): (index, ns).
    pub fn report(&mut self, what: &str) -> Vec<(usize, u64)> {
        writeln!(self.stdin, "{what}").unwrap();
        let line = self.read_line();
        line.split_whitespace()
            .skip(1)
            .filter_map(|p| {
                let (i, t) = p.split_once(':')?;
                Some((i.parse().ok()?, t.parse().ok()?))
            })
            .collect()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Splits `tokens` over workers of at most `per_worker` sockets (plain framing).
pub fn spawn_workers(url: &str, tokens: &[String], per_worker: usize, dir: &TempDir, reconnect: bool) -> Vec<Worker> {
    spawn_workers_framed(url, tokens, per_worker, dir, reconnect, Framing::Plain)
}

/// [`spawn_workers`] with the given framing; returns once every socket is authenticated.
pub fn spawn_workers_framed(
    url: &str,
    tokens: &[String],
    per_worker: usize,
    dir: &TempDir,
    reconnect: bool,
    framing: Framing,
) -> Vec<Worker> {
    let mut workers: Vec<Worker> = tokens
        .chunks(per_worker)
        .enumerate()
        .map(|(k, chunk)| {
            let mut w = Worker::spawn_framed(url, chunk, dir, reconnect, framing);
            w.first = k * per_worker;
            w
        })
        .collect();
    for w in &mut workers {
        let (ok, failed) = w.wait_ready();
        assert_eq!(failed, 0, "worker: {ok} ok, {failed} failed");
    }
    workers
}

/// Polls the workers' `logout` frames until `n` have arrived or `timeout` has passed: (index
/// among all their tokens, arrival ns).
pub async fn await_logouts(workers: &mut [Worker], n: usize, timeout: Duration) -> Vec<(usize, u64)> {
    let deadline = Instant::now() + timeout;
    let mut arrivals = Vec::new();
    while arrivals.len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        arrivals = workers
            .iter_mut()
            .flat_map(|w| {
                let first = w.first;
                w.report("logouts").into_iter().map(move |(i, t)| (first + i, t))
            })
            .collect();
    }
    arrivals
}

pub fn hist() -> Histogram<u64> {
    Histogram::<u64>::new(3).unwrap()
}

/// A table row of a latency histogram recorded in microseconds, printed in milliseconds.
pub fn row(name: &str, h: &Histogram<u64>) -> String {
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    format!(
        "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
        h.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        h.max() as f64 / 1000.0
    )
}

pub const LATENCY_HEADER: &str = "| latency (ms) | n | p50 | p90 | p99 | p99.9 | max |\n|---|---|---|---|---|---|---|";

/// User + system CPU time a process has used so far, in µs (`/proc/PID/stat`, fields 14 and
/// 15): what a server spends, which holds from run to run on a shared machine where wall-clock
/// latencies do not.
pub fn cpu_us(pid: u32) -> u64 {
    let (user, system) = cpu_split_us(pid);
    user + system
}

/// A process's CPU time so far, µs: (user, system). System time is the kernel's work for the
/// process (on loopback, sending a frame also runs the receiver's TCP processing).
pub fn cpu_split_us(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return (0, 0) };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // After ")": state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let hz = clock_ticks();
    (ticks(11) * 1_000_000 / hz, ticks(12) * 1_000_000 / hz)
}

/// [`cpu_us`] once the process has gone quiet: no tick charged over 200 ms (at most 10 s), so
/// work a server defers past the moment measured (closing the sockets after their last frame
/// went out, freeing them) is counted too.
pub async fn cpu_us_settled(pid: u32) -> u64 {
    let tick = 1_000_000 / clock_ticks();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut now = cpu_us(pid);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let next = cpu_us(pid);
        if next - now <= tick || Instant::now() > deadline {
            return now;
        }
        now = next;
    }
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as u64
    } else {
        100
    }
}

/// Resident set size of a process, in KiB (`VmRSS` of `/proc/PID/status`; 0 if gone).
pub fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
