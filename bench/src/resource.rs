//! `revoke-to-resource-server` (issue 13): how soon a resource server that verifies tokens
//! offline refuses a revoked session's token. sessiond holds `--idle` sockets; the `notes`
//! example of sessiond-verify (a separate process) follows the revocation feed; open-loop
//! logouts at `--rate`; for each, the time from the logout's response (and from its request)
//! to the first 401 from the notes API, probed right after the response. On SQLite, then on
//! PostgreSQL with every logout going to instance B while the notes API follows instance A.
//! Also: server CPU per revocation (with the follower attached), and the follower's RSS per
//! denylist entry.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::scenarios::Db;
use crate::Args;

/// The `notes` example binary, built next to this tool.
fn notes_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().join("examples").join("notes");
    if !path.exists() {
        let release = exe.parent().unwrap().ends_with("release");
        let mut cmd = Command::new("cargo");
        cmd.args(["build", "-p", "sessiond-verify", "--example", "notes"]);
        if release {
            cmd.arg("--release");
        }
        assert!(cmd.status().expect("cargo").success(), "building the notes example");
    }
    path
}

struct Notes {
    child: Child,
    port: u16,
}

impl Notes {
    async fn start(issuer: &str, key: &str) -> Notes {
        let port = free_port();
        let child = Command::new(notes_binary())
            .args(["--issuer", issuer, "--listen", &format!("127.0.0.1:{port}")])
            .env("NOTES_SERVICE_KEY", key)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the notes example starts");
        let notes = Notes { child, port };
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = client.get(format!("http://127.0.0.1:{port}/readyz")).send().await;
            if r.is_ok_and(|r| r.status().as_u16() == 200) {
                return notes;
            }
            assert!(Instant::now() < deadline, "the notes API never got ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn rss_kib(&self) -> u64 {
        rss_of(self.child.id())
    }
}

impl Drop for Notes {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn run(args: &Args) -> Vec<String> {
    let mut out = vec![
        "| store | revocations | from response: p50 | p99 | max | from request: p50 | p99 | refused within 2 s | server CPU per revocation (µs) | follower RSS per entry (bytes) |".into(),
        "|---|---|---|---|---|---|---|---|---|---|".into(),
    ];
    for postgres in [false, true] {
        out.push(one(args, postgres).await);
    }
    out
}

async fn one(args: &Args, postgres: bool) -> String {
    let dir = TempDir::new();
    let db = Db::new(args, &dir, postgres).await;
    let (pa, pb) = (free_port(), free_port());
    let issuer_a = format!("http://127.0.0.1:{pa}");
    let a = Server::start(&db.url, pa, &[("SESSIOND_ISSUER", &issuer_a)]).await;
    // With PostgreSQL the logouts go to instance B while the follower reads A (one deployment,
    // one issuer): every entry crosses NOTIFY before it reaches the stream.
    let b = if postgres { Some(Server::start(&db.url, pb, &[("SESSIOND_ISSUER", &issuer_a)]).await) } else { None };
    let revoking = b.as_ref().unwrap_or(&a);
    let minter = Minter::with_issuer(&db.url, &a.base(), &issuer_a).await;
    let name: sessiond::service_credentials::ServiceName = "bench-notes".parse().unwrap();
    let scopes = [sessiond::service_credentials::Scope::RevocationsRead];
    let secret = sessiond::service_credentials::create(&minter.store, 0, &name, &scopes, &Default::default())
        .await
        .unwrap()
        .expect("a new credential");
    let notes = Notes::start(&issuer_a, secret.as_str()).await;
    let idle: Vec<String> = minter.mint(args.idle).await.into_iter().map(|m| m.access).collect();
    let _idle = spawn_workers(&revoking.ws(), &idle, 9_500, &dir, false);
    let measured = minter.mint(args.revokes()).await;
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(256).build().unwrap();
    let notes_url = format!("http://127.0.0.1:{}/notes", notes.port);
    for m in &measured {
        let r = client.get(&notes_url).bearer_auth(&m.access).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "a live token is accepted before its logout");
    }
    let rss_before = notes.rss_kib();
    let cpu_before = cpu_us(a.child.id()) + b.as_ref().map_or(0, |b| cpu_us(b.child.id()));

    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let period = Duration::from_secs_f64(1.0 / args.rate());
    let mut tasks = Vec::new();
    for (i, m) in measured.iter().enumerate() {
        let (client, logout, notes_url, access) =
            (client.clone(), format!("{}/v1/auth/logout", revoking.base()), notes_url.clone(), m.access.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + period * i as u32).await;
            let sent = mono_ns();
            let r = client.post(logout).bearer_auth(&access).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 204);
            let resp = mono_ns();
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                let r = client.get(&notes_url).bearer_auth(&access).send().await.unwrap();
                if r.status().as_u16() == 401 {
                    return Some((sent, resp, mono_ns()));
                }
            }
            None
        }));
    }
    let (mut from_resp, mut from_req, mut refused) = (hist(), hist(), 0);
    for t in tasks {
        if let Some((sent, resp, at)) = t.await.unwrap() {
            refused += 1;
            from_resp.record(at.saturating_sub(resp) / 1000).unwrap();
            from_req.record(at.saturating_sub(sent) / 1000).unwrap();
        }
    }
    let cpu = cpu_us(a.child.id()) + b.as_ref().map_or(0, |b| cpu_us(b.child.id())) - cpu_before;
    let rss_after = notes.rss_kib();
    let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let line = format!(
        "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {refused} of {} | {:.0} | {:.0} |",
        if postgres { "PostgreSQL (logouts on B, follower on A)" } else { "SQLite" },
        measured.len(),
        ms(&from_resp, 0.5),
        ms(&from_resp, 0.99),
        from_resp.max() as f64 / 1000.0,
        ms(&from_req, 0.5),
        ms(&from_req, 0.99),
        measured.len(),
        cpu as f64 / measured.len() as f64,
        (rss_after.saturating_sub(rss_before) * 1024) as f64 / measured.len() as f64,
    );
    drop(notes);
    drop((a, b));
    db.drop_db().await;
    line
}
