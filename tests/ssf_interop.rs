//! Interoperability of the SSF transmitter (docs/SSF.md) with an implementation that shares
//! nothing with sessiond: `tests/conformance/ssf_receiver.py`, an RFC 8935 push receiver that
//! verifies every SET with joserfc against the published `jwks_uri`, checks rule C0 of §6 by its
//! own reading of the specs, checks the push's `Content-Type` and `Authorization`, and logs one
//! JSON line per POST.
//!
//! The real `sessiond` binary (SQLite, `--ssf-allow-insecure-push`) is driven as an operator and
//! its users would: a credential from `sessiond service add --scope ssf`, an admin from
//! `sessiond user add --admin`, a push stream with an `authorization_header`, then every event
//! kind sessiond emits (verification, logout, logout-others, password change, account disable
//! and enable, refresh-token reuse, an operator's pause and enable). Every SET must pass the
//! Python checks, with unique `jti`s, the expected events, and the per-user order of §3.1.
//!
//! Needs `python3` with `joserfc` (`pip install joserfc`); without it the test says so in
//! `cargo test`'s output and passes, unless `SESSIOND_REQUIRE_SSF_INTEROP=1` (set by `.ci/run`,
//! which installs it), where it fails.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

#[allow(dead_code)]
#[path = "support/skip.rs"]
mod skip;

const BIN: &str = env!("CARGO_BIN_EXE_sessiond");
const PASSWORD: &str = "correct horse battery staple";
const C: &str = "https://schemas.openid.net/secevent/caep/event-type/";
const R: &str = "https://schemas.openid.net/secevent/risc/event-type/";
const S: &str = "https://schemas.openid.net/secevent/ssf/event-type/";
/// The service credential's name, and so the stream's `aud`.
const AUD: &str = "interop-rx";
/// SETs the scenario causes (see the table in `every_event_kind_passes_an_independent_receiver`).
const EXPECTED: usize = 13;

fn python_has_joserfc() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import joserfc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `sessiond` with a clean environment: only the flags a test passes configure it.
fn sessiond() -> Command {
    let mut c = Command::new(BIN);
    c.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default()).env("RUST_LOG", "warn");
    c
}

/// `sessiond ARGS… --database-url URL` with `stdin` as its input; its stdout, trimmed.
async fn cli(url: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = sessiond()
        .args(args)
        .args(["--database-url", url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(format!("{text}\n").as_bytes()).await.unwrap();
    }
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "sessiond {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

struct Http {
    client: reqwest::Client,
    base: String,
}

/// One login's tokens.
struct Session {
    access: String,
    refresh: String,
    session_id: String,
    user_id: String,
}

impl Http {
    fn at(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn post(&self, path: &str, bearer: Option<&str>, body: Option<Value>) -> reqwest::Response {
        let mut req = self.client.post(self.at(path));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }

    /// Registers `email` (password [`PASSWORD`]).
    async fn register(&self, email: &str) {
        let r = self.post("/v1/auth/register", None, Some(json!({ "email": email, "password": PASSWORD }))).await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }

    async fn login(&self, email: &str) -> Session {
        let r = self.post("/v1/auth/login", None, Some(json!({ "email": email, "password": PASSWORD }))).await;
        assert_eq!(r.status(), StatusCode::OK);
        let t: Value = r.json().await.unwrap();
        let s = |k: &str| t[k].as_str().unwrap().to_string();
        Session {
            access: s("access_token"),
            refresh: s("refresh_token"),
            session_id: s("session_id"),
            user_id: s("user_id"),
        }
    }

    /// A new user with `n` sessions.
    async fn user(&self, name: &str, n: usize) -> Vec<Session> {
        let email = format!("{name}-{}@example.com", uuid::Uuid::new_v4().simple());
        self.register(&email).await;
        let mut sessions = Vec::new();
        for _ in 0..n {
            sessions.push(self.login(&email).await);
        }
        sessions
    }
}

/// The receiver's log: one JSON object per POST, in arrival order.
fn lines(path: &Path) -> Vec<Value> {
    read(path).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

fn event_type(line: &Value) -> String {
    line["claims"]["events"].as_object().and_then(|e| e.keys().next().cloned()).unwrap_or_default()
}

fn event(line: &Value) -> &Value {
    let claims = &line["claims"]["events"];
    claims.as_object().and_then(|e| e.values().next()).unwrap_or(&Value::Null)
}

/// The user a SET is about: `sub_id.sub` (simple) or `sub_id.user.sub` (complex).
fn user_of(line: &Value) -> Option<&str> {
    let sub_id = &line["claims"]["sub_id"];
    sub_id["sub"].as_str().or_else(|| sub_id["user"]["sub"].as_str())
}

/// The SETs about `user`, in arrival order, as `(event type, line)`.
fn about<'a>(all: &'a [Value], user: &str) -> Vec<(String, &'a Value)> {
    all.iter().filter(|l| user_of(l) == Some(user)).map(|l| (event_type(l), l)).collect()
}

struct Processes {
    server: Child,
    /// Held so that it is killed with the test (`kill_on_drop`).
    _receiver: Option<Child>,
    server_log: PathBuf,
    receiver_log: PathBuf,
}

impl Processes {
    fn logs(&self) -> String {
        format!("server log:\n{}\nreceiver stderr:\n{}", read(&self.server_log), read(&self.receiver_log))
    }
}

#[tokio::test]
async fn every_event_kind_passes_an_independent_receiver() {
    if !python_has_joserfc() {
        if std::env::var("SESSIOND_REQUIRE_SSF_INTEROP").as_deref() == Ok("1") {
            panic!("SESSIOND_REQUIRE_SSF_INTEROP=1 but python3 with joserfc is missing (pip install joserfc)");
        }
        skip::report("SSF interop did NOT run: python3 with joserfc is missing (pip install joserfc)");
        return;
    }
    let began = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("sessiond.db").display());
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let server_log = dir.path().join("server.log");
    let receiver_log = dir.path().join("receiver.log");
    let sets = dir.path().join("sets.jsonl");

    // The server. A refresh-token reuse outside the grace window needs no wait with a 0 s grace.
    let server = sessiond()
        .env("RUST_LOG", "info")
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--issuer", &base, "--database-url", &url])
        .args(["--ssf-allow-insecure-push", "--refresh-reuse-grace", "0s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&server_log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("the sessiond binary starts");
    let mut procs = Processes { server, _receiver: None, server_log, receiver_log };
    let http = Http { client: reqwest::Client::builder().no_proxy().build().unwrap(), base: base.clone() };
    let ready = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.client.get(http.at("/readyz")).send().await {
            if r.status() == StatusCode::OK {
                break;
            }
        }
        if let Some(status) = procs.server.try_wait().unwrap() {
            panic!("sessiond exited ({status}) before it was ready\n{}", procs.logs());
        }
        assert!(Instant::now() < ready, "sessiond did not get ready\n{}", procs.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The operator's part: a receiver credential and an admin.
    let sk = cli(&url, &["service", "add", AUD, "--scope", "ssf"], None).await;
    assert!(sk.starts_with("sk_"), "service add printed no secret");
    let admin_email = format!("admin-{}@example.com", uuid::Uuid::new_v4().simple());
    cli(&url, &["user", "add", "--email", &admin_email, "--admin"], Some(PASSWORD)).await;
    let admin = http.login(&admin_email).await;

    // The independent receiver; it prints its port once it listens.
    let authorization = format!("Bearer rx-{}", uuid::Uuid::new_v4().simple());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/ssf_receiver.py");
    let mut receiver = Command::new("python3")
        .arg(&script)
        .args(["--transmitter", &base, "--issuer", &base, "--aud", AUD])
        .arg("--out")
        .arg(&sets)
        .args(["--authorization", &authorization])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&procs.receiver_log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut stdout = BufReader::new(receiver.stdout.take().unwrap()).lines();
    procs._receiver = Some(receiver);
    let first = tokio::time::timeout(Duration::from_secs(15), stdout.next_line()).await;
    let rx_port: u16 = match first {
        Ok(Ok(Some(line))) => line.trim().parse().expect("the receiver prints its port"),
        _ => panic!("the receiver did not report its port\n{}", procs.logs()),
    };
    let endpoint = format!("http://127.0.0.1:{rx_port}/events");

    // The stream.
    let all_events = json!([
        format!("{C}session-revoked"),
        format!("{C}credential-change"),
        format!("{R}account-disabled"),
        format!("{R}account-enabled"),
    ]);
    let body = json!({
        "delivery": { "method": "urn:ietf:rfc:8935", "endpoint_url": endpoint, "authorization_header": authorization },
        "events_requested": all_events,
    });
    let r = http.post("/ssf/stream", Some(&sk), Some(body)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let stream: Value = r.json().await.unwrap();
    let stream_id = stream["stream_id"].as_str().unwrap().to_string();
    assert_eq!(stream["aud"], AUD);

    // Every event kind. Expected SETs:
    //   verification                                   1
    //   logout (a)                                     1 session-revoked
    //   logout-all keep_current, 3 sessions (b)        2 session-revoked
    //   password change, 2 sessions (c)                credential-change + 1 session-revoked
    //   admin disable, 2 sessions, then enable (d)     account-disabled + 2 session-revoked + account-enabled
    //   refresh-token reuse (e)                        1 session-revoked
    //   operator pause, then enable                    2 stream-updated
    let r = http.post("/ssf/verify", Some(&sk), Some(json!({ "stream_id": stream_id, "state": "interop-1" }))).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let a = http.user("a", 1).await;
    let r = http.post("/v1/auth/logout", Some(&a[0].access), None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let b = http.user("b", 3).await;
    let r = http.post("/v1/auth/logout-all", Some(&b[0].access), Some(json!({ "keep_current": true }))).await;
    assert_eq!(r.status(), StatusCode::OK);

    let c = http.user("c", 2).await;
    let change = json!({ "current_password": PASSWORD, "new_password": "another long password" });
    let r = http.post("/v1/auth/password", Some(&c[0].access), Some(change)).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let d = http.user("d", 2).await;
    let r = http.post(&format!("/v1/admin/users/{}/disable", d[0].user_id), Some(&admin.access), None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = http.post(&format!("/v1/admin/users/{}/enable", d[0].user_id), Some(&admin.access), None).await;
    assert_eq!(r.status(), StatusCode::OK);

    // Reuse: the rotated-out token again, from another client (another User-Agent), so it is a
    // reuse whatever the grace window (docs/API.md §3.3, SECURITY.md RT6).
    let e = http.user("e", 1).await;
    let r = http.post("/v1/auth/refresh", None, Some(json!({ "refresh_token": e[0].refresh }))).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = http
        .client
        .post(http.at("/v1/auth/refresh"))
        .header("user-agent", "another-client/1.0")
        .json(&json!({ "refresh_token": e[0].refresh }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    cli(&url, &["ssf", "stream", "pause", &stream_id, "--reason", "interop maintenance"], None).await;
    cli(&url, &["ssf", "stream", "enable", &stream_id], None).await;

    // Wait (bounded) until every SET arrived, then a short quiet window for any extra one.
    let deadline = Instant::now() + Duration::from_secs(20);
    while lines(&sets).iter().filter(|l| l["duplicate"] != true).count() < EXPECTED {
        assert!(
            Instant::now() < deadline,
            "{} of {EXPECTED} SETs arrived within 20 s: {:#?}\n{}",
            lines(&sets).len(),
            lines(&sets),
            procs.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = lines(&sets);

    // Every POST passed the receiver's checks: C0 (joserfc signature against jwks_uri, iss,
    // aud, iat, jti, no sub/exp, one event, sub_id.format), Content-Type, Authorization.
    for l in &all {
        assert_eq!(l["ok"], true, "the independent receiver refused a SET: {l:#}\n{}", procs.logs());
        assert_eq!(l["header"]["typ"], "secevent+jwt");
        assert_eq!(l["header"]["alg"], "RS256");
    }
    let fresh: Vec<Value> = all.iter().filter(|l| l["duplicate"] != true).cloned().collect();
    assert_eq!(fresh.len(), EXPECTED, "unexpected SETs: {fresh:#?}");
    let jtis: std::collections::HashSet<&str> = fresh.iter().map(|l| l["claims"]["jti"].as_str().unwrap()).collect();
    assert_eq!(jtis.len(), EXPECTED, "jtis are not unique");

    // Verification.
    let stream_subject = json!({ "format": "opaque", "id": stream_id });
    let verification: Vec<&Value> = fresh.iter().filter(|l| event_type(l) == format!("{S}verification")).collect();
    assert_eq!(verification.len(), 1);
    assert_eq!(verification[0]["claims"]["sub_id"], stream_subject);
    assert_eq!(*event(verification[0]), json!({ "state": "interop-1" }));

    // Sessions and users.
    let revoked = format!("{C}session-revoked");
    let check_revoked = |l: &Value, user: &Session, reason: &str, who: &str| {
        assert_eq!(event_type(l), revoked);
        assert_eq!(l["claims"]["sub_id"]["format"], "complex");
        assert_eq!(l["claims"]["sub_id"]["user"], json!({ "format": "iss_sub", "iss": base, "sub": user.user_id }));
        assert_eq!(event(l)["reason_admin"]["en"], reason);
        assert_eq!(event(l)["initiating_entity"], who);
    };
    let got = about(&fresh, &a[0].user_id);
    assert_eq!(got.len(), 1);
    check_revoked(got[0].1, &a[0], "logout", "user");
    assert_eq!(got[0].1["claims"]["sub_id"]["session"]["id"], json!(a[0].session_id));

    let got = about(&fresh, &b[0].user_id);
    assert_eq!(got.len(), 2);
    let mut ended: Vec<&str> =
        got.iter().map(|(_, l)| l["claims"]["sub_id"]["session"]["id"].as_str().unwrap()).collect();
    ended.sort();
    let mut others = vec![b[1].session_id.as_str(), b[2].session_id.as_str()];
    others.sort();
    assert_eq!(ended, others, "logout-others ends the other sessions, never the kept one");
    for (_, l) in &got {
        check_revoked(l, &b[0], "logout_others", "user");
        assert_eq!(l["claims"]["txn"], got[0].1["claims"]["txn"]);
    }

    // The credential change goes out before the session it ends (§2 table, §3.1 order).
    let got = about(&fresh, &c[0].user_id);
    let kinds: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(kinds, [format!("{C}credential-change").as_str(), revoked.as_str()]);
    assert_eq!(got[0].1["claims"]["sub_id"], json!({ "format": "iss_sub", "iss": base, "sub": c[0].user_id }));
    assert_eq!(event(got[0].1)["credential_type"], "password");
    assert_eq!(event(got[0].1)["change_type"], "update");
    check_revoked(got[1].1, &c[0], "password_changed", "user");
    assert_eq!(got[1].1["claims"]["sub_id"]["session"]["id"], json!(c[1].session_id));
    assert_eq!(got[0].1["claims"]["txn"], got[1].1["claims"]["txn"]);

    // Disabled, its sessions ended, enabled: in that order.
    let got = about(&fresh, &d[0].user_id);
    let kinds: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    let (disabled, enabled) = (format!("{R}account-disabled"), format!("{R}account-enabled"));
    assert_eq!(kinds, [disabled.as_str(), revoked.as_str(), revoked.as_str(), enabled.as_str()]);
    for (_, l) in &got[1..3] {
        check_revoked(l, &d[0], "account_disabled", "admin");
        assert_eq!(l["claims"]["txn"], got[0].1["claims"]["txn"]);
    }
    for (_, l) in [&got[0], &got[3]] {
        assert_eq!(l["claims"]["sub_id"], json!({ "format": "iss_sub", "iss": base, "sub": d[0].user_id }));
        assert_eq!(event(l)["initiating_entity"], "admin");
        assert!(event(l).get("reason").is_none(), "RISC reason is only hijacking|bulk-account");
    }

    let got = about(&fresh, &e[0].user_id);
    assert_eq!(got.len(), 1);
    check_revoked(got[0].1, &e[0], "refresh_token_reused", "policy");

    // The operator's status changes, announced in order.
    let updates: Vec<&Value> = fresh.iter().filter(|l| event_type(l) == format!("{S}stream-updated")).collect();
    assert_eq!(updates.len(), 2);
    for l in &updates {
        assert_eq!(l["claims"]["sub_id"], stream_subject);
    }
    assert_eq!(*event(updates[0]), json!({ "status": "paused", "reason": "interop maintenance" }));
    assert_eq!(*event(updates[1]), json!({ "status": "enabled" }));

    // A control: the receiver does check the Authorization header (so every line above that
    // passed carried the configured one).
    let r = http
        .client
        .post(&endpoint)
        .header("content-type", "application/secevent+jwt")
        .header("authorization", "Bearer not-the-configured-one")
        .body("not-a-set")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let last = lines(&sets).pop().unwrap();
    assert!(
        last["errors"].as_array().unwrap().iter().any(|e| e.as_str().unwrap().contains("Authorization")),
        "{last:#}"
    );

    eprintln!("ssf interop: {EXPECTED} SETs checked by the Python receiver in {:?}", began.elapsed());
}
