//! The OpenAPI document (`GET /openapi.json`) and [schemathesis] against the real server.
//!
//! Both tests start the `sessiond` binary built for this test run on a temp SQLite database and
//! a free port, with a bootstrap admin, registration uncapped (`SESSIOND_REGISTER_PER_IP_PER_HOUR=0`)
//! and login backoff out of reach (`SESSIOND_LOGIN_FREE_FAILURES=100000`): schemathesis registers
//! and logs in (with wrong passwords, mostly) far more often than one client should.
//!
//! - `openapi_document_describes_the_api` checks the document itself: every endpoint of docs/API.md
//!   §4 plus the admin and operational ones, the Bearer scheme, the problem schema, and the
//!   headers of 401 and 429. It needs nothing but the binary.
//! - `schemathesis_finds_no_failure` runs `schemathesis run <url>/openapi.json --checks all`
//!   (coverage, fuzzing and stateful phases; the stateful phase follows the document's links,
//!   register → login → refresh → logout and the admin calls on the new user) with the admin's
//!   access token from dynamic auth: schemathesis logs in as the admin and logs in again when a
//!   call answers 401 (after `logout`, `logout-all` or `logout-everyone` ended that session).
//!   `/v1/ws` is left out of the run (a positive case would be a real upgrade; the socket is
//!   tested by `tests/api/ws.rs`). Reports land in `target/schemathesis/` (JUnit).
//!
//! Needs `schemathesis` (PyPI: `pip install schemathesis`, tested with 4.32.5) on `PATH` or as
//! `python3 -m schemathesis.cli`; without it the test says loudly that it was skipped, unless
//! `SESSIOND_REQUIRE_SCHEMATHESIS=1` (set by `.ci/run`), where it fails.
//! `SESSIOND_SCHEMATHESIS_MAX_EXAMPLES` (default 100) and `SESSIOND_SCHEMATHESIS_SEED` (default
//! fixed; `random` for a fresh one) tune a run by hand.
//!
//! [schemathesis]: https://schemathesis.readthedocs.io/

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[allow(dead_code)]
#[path = "support/skip.rs"]
mod skip;

const ADMIN_EMAIL: &str = "schemathesis-admin@example.com";
const ADMIN_PASSWORD: &str = "schemathesis-admin-password";
/// The version `.ci/run` installs.
const TESTED_VERSION: &str = "4.32.5";
const DEFAULT_SEED: &str = "20261127";
const DEFAULT_MAX_EXAMPLES: &str = "100";

/// A running server; killed on drop.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = dir.path().join("server.log");
        let child = Command::new(env!("CARGO_BIN_EXE_sessiond"))
            .env("SESSIOND_LISTEN", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", format!("sqlite://{}", dir.path().join("sessiond.db").display()))
            .env("SESSIOND_ADMIN_EMAIL", ADMIN_EMAIL)
            .env("SESSIOND_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("SESSIOND_REGISTER_PER_IP_PER_HOUR", "0")
            .env("SESSIOND_LOGIN_FREE_FAILURES", "100000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the sessiond binary starts");
        let server = Server { child, port, log, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(server.port, "/readyz").map(|(status, _)| status) != Some(200) {
            assert!(Instant::now() < deadline, "the server did not get ready:\n{}", server.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET: status and body.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys() {
            if ["get", "put", "post", "delete", "patch", "head", "options", "trace"].contains(&method.as_str()) {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

#[test]
fn openapi_document_describes_the_api() {
    let server = Server::start();
    let (status, body) = get(server.port, "/openapi.json").expect("GET /openapi.json");
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&body).expect("the document is JSON");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."), "OpenAPI 3.1: {}", doc["openapi"]);

    let expected: BTreeSet<(String, String)> = [
        ("POST", "/v1/auth/register"),
        ("POST", "/v1/auth/login"),
        ("POST", "/v1/auth/refresh"),
        ("POST", "/v1/auth/logout"),
        ("POST", "/v1/auth/logout-all"),
        ("GET", "/v1/auth/sessions"),
        ("DELETE", "/v1/auth/sessions/{id}"),
        ("POST", "/v1/auth/password"),
        ("GET", "/v1/me"),
        ("GET", "/v1/admin/users"),
        ("GET", "/v1/admin/users/{id}/sessions"),
        ("POST", "/v1/admin/users/{id}/logout-all"),
        ("DELETE", "/v1/admin/sessions/{id}"),
        ("POST", "/v1/admin/logout-everyone"),
        ("POST", "/v1/admin/users/{id}/disable"),
        ("POST", "/v1/admin/users/{id}/enable"),
        ("POST", "/v1/admin/users/{id}/admin"),
        ("DELETE", "/v1/admin/users/{id}/admin"),
        ("GET", "/v1/admin/audit"),
        ("GET", "/v1/admin/health"),
        ("GET", "/v1/revocations"),
        ("GET", "/v1/revocations/stream"),
        ("POST", "/oauth2/revoke"),
        ("POST", "/oauth2/introspect"),
        ("POST", "/oauth2/token"),
        ("GET", "/.well-known/oauth-authorization-server"),
        ("GET", "/v1/ws"),
        ("GET", "/.well-known/jwks.json"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(operations(&doc), expected);

    // The problem schema and its codes (docs/API.md §2).
    let codes: BTreeSet<&str> = doc["components"]["schemas"]["ProblemCode"]["enum"]
        .as_array()
        .expect("ProblemCode enum")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let api_md_codes = [
        "invalid_request",
        "email_taken",
        "registration_disabled",
        "invalid_credentials",
        "rate_limited",
        "invalid_token",
        "token_expired",
        "session_revoked",
        "invalid_refresh_token",
        "refresh_token_reused",
        "forbidden",
        "not_found",
        "payload_too_large",
        "internal",
        "unavailable",
        // The Shared Signals management API's 409 (docs/SSF.md §8.7).
        "stream_exists",
    ];
    assert_eq!(codes, api_md_codes.into_iter().collect());
    let problem = &doc["components"]["schemas"]["Problem"];
    for field in ["type", "title", "status", "detail", "code"] {
        assert!(problem["properties"][field].is_object(), "Problem.{field}");
        assert!(problem["required"].as_array().unwrap().contains(&Value::from(field)), "Problem.{field} required");
    }
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert_eq!(doc["components"]["securitySchemes"]["service"]["scheme"], "bearer");
    // The revocation feed takes a service credential (docs/API.md §8, §9).
    let feed = &doc["paths"]["/v1/revocations"]["get"];
    assert_eq!(feed["security"], serde_json::json!([{ "service": [] }]));
    assert_eq!(feed["responses"]["401"]["headers"]["WWW-Authenticate"]["required"], true);
    for status in ["400", "403", "503"] {
        assert!(feed["responses"][status].is_object(), "/v1/revocations {status}");
    }
    assert!(doc["components"]["schemas"]["Revocation"]["properties"]["until"].is_object());

    for (method, path) in &expected {
        let op = &doc["paths"][path][method.to_lowercase()];
        let responses = op["responses"].as_object().unwrap();
        assert!(responses.keys().any(|s| s.starts_with('2') || s == "101"), "{method} {path}: a success response");
        let protected = op["security"].as_array().is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
        for (status, response) in responses {
            if (path.starts_with("/oauth2/") && status == "400") || (path == "/oauth2/token" && status == "401") {
                // RFC 6749 §5.2: the OAuth error form, not problem+json (docs/API.md §10;
                // `invalid_client` of the token endpoint is a 401).
                assert!(response["content"]["application/json"].is_object(), "{method} {path} 400: OAuth form");
            } else if status.starts_with('4') || status.starts_with('5') {
                assert!(
                    response["content"]["application/problem+json"].is_object(),
                    "{method} {path} {status}: problem+json"
                );
            }
            if status == "429" {
                assert_eq!(response["headers"]["Retry-After"]["required"], true, "{method} {path}: Retry-After");
            }
            if status == "401" && protected {
                assert!(response["headers"]["WWW-Authenticate"].is_object(), "{method} {path}: WWW-Authenticate");
            }
        }
        if protected {
            assert!(responses.contains_key("401"), "{method} {path}: 401");
        }
        if path.starts_with("/v1/admin/") {
            assert!(responses.contains_key("403"), "{method} {path}: 403");
        }
    }
    assert_eq!(doc["paths"]["/v1/auth/login"]["post"]["responses"]["429"]["headers"]["Retry-After"]["required"], true);
    assert_eq!(doc["paths"]["/v1/me"]["get"]["responses"]["401"]["headers"]["WWW-Authenticate"]["required"], true);
    // Cookie mode of refresh and logout.
    for path in ["/v1/auth/refresh", "/v1/auth/logout"] {
        let params = doc["paths"][path]["post"]["parameters"].as_array().unwrap();
        let has = |name: &str, place: &str| params.iter().any(|p| p["name"] == name && p["in"] == place);
        assert!(has("__Host-sessiond_refresh", "cookie") && has("X-Sessiond-Csrf", "header"), "{path}: cookie mode");
    }
    // Links for the stateful phase (in OpenAPI's spelling).
    let login_links = &doc["paths"]["/v1/auth/login"]["post"]["responses"]["200"]["links"];
    assert_eq!(login_links["refresh"]["operationId"], "refresh");
    assert_eq!(login_links["refresh"]["requestBody"]["refresh_token"], "$response.body#/refresh_token");
}

/// The schemathesis command, if it can run here.
fn schemathesis() -> Option<Vec<String>> {
    let candidates: [&[&str]; 2] = [&["schemathesis"], &["python3", "-m", "schemathesis.cli"]];
    candidates.into_iter().find_map(|cmd| {
        let out = Command::new(cmd[0]).args(&cmd[1..]).arg("--version").output().ok()?;
        out.status.success().then(|| {
            eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
            cmd.iter().map(|s| s.to_string()).collect()
        })
    })
}

/// `schemathesis.toml`: the admin's token by dynamic auth (and again after a 401), and the
/// expected answers where the document cannot say when a schema-valid request fails.
fn config() -> String {
    format!(
        r#"
[auth.dynamic.openapi.bearer]
path = "/v1/auth/login"
method = "post"
payload = {{ email = "{ADMIN_EMAIL}", password = "{ADMIN_PASSWORD}" }}
extract_selector = "/access_token"
retry_on = [401]

# Stateful: only the document's links (not links inferred from names), longer scenarios, and
# schema-valid requests only (the other phases send the invalid ones).
[phases.stateful]
max-steps = 12
generation.max-examples = 100
generation.mode = "positive"
inference.algorithms = []

# An admin cannot disable or demote themself (400), and the stateful phase does find the
# admin's own id (GET /v1/me). The id is schema-valid; the state is what refuses it.
[[operations]]
include-operation-id = ["disable_user", "revoke_admin"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]
"#
    )
}

#[test]
fn schemathesis_finds_no_failure() {
    let Some(cmd) = schemathesis() else {
        if std::env::var("SESSIOND_REQUIRE_SCHEMATHESIS").as_deref() == Ok("1") {
            panic!("SESSIOND_REQUIRE_SCHEMATHESIS=1 but schemathesis is not installed");
        }
        skip::report(&format!(
            "schemathesis did NOT run (not on PATH, nor `python3 -m schemathesis.cli`): pip install 'schemathesis=={TESTED_VERSION}'"
        ));
        return;
    };
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let config_path = work.path().join("schemathesis.toml");
    std::fs::write(&config_path, config()).unwrap();
    let reports = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/schemathesis");
    let max_examples =
        std::env::var("SESSIOND_SCHEMATHESIS_MAX_EXAMPLES").unwrap_or_else(|_| DEFAULT_MAX_EXAMPLES.into());
    let seed = std::env::var("SESSIOND_SCHEMATHESIS_SEED").unwrap_or_else(|_| DEFAULT_SEED.into());
    let common = |name: &str| {
        let mut args: Vec<String> = vec![
            "--config-file".into(),
            config_path.display().to_string(),
            "run".into(),
            server.url("/openapi.json"),
            "--checks".into(),
            "all".into(),
            "--max-examples".into(),
            max_examples.clone(),
            "--generation-allow-x00".into(),
            "true".into(),
            "--request-timeout".into(),
            "20".into(),
            "--no-color".into(),
            "--report".into(),
            "junit".into(),
            "--report-dir".into(),
            reports.display().to_string(),
            "--report-junit-path".into(),
            format!("{name}.xml"),
        ];
        if seed != "random" {
            args.extend(["--seed".into(), seed.clone()]);
        }
        args
    };
    let started = Instant::now();
    // 1. Every operation, every phase. `/v1/ws` is left out: a schema-valid request is a real
    //    upgrade, which an HTTP fuzzer cannot follow (tests/api/ws.rs covers the socket).
    let mut all = common("all");
    all.extend(["--exclude-path".into(), "/v1/ws".into()]);
    run(&cmd, &all, work.path(), &server);
    // 2. The account flow alone, statefully: with every operation in play the links
    //    register → login → refresh → logout are followed too rarely to reach a refresh.
    let mut flow = common("flow");
    flow.extend([
        "--phases".into(),
        "stateful".into(),
        "--include-path-regex".into(),
        "^/v1/auth/(register|login|refresh|logout)$".into(),
    ]);
    run(&cmd, &flow, work.path(), &server);
    eprintln!("schemathesis finished in {:.0?}", started.elapsed());
    // What the runs reached, by route and status (from the server's own counters).
    let (_, metrics) = get(server.port, "/metrics").expect("GET /metrics");
    let reached: Vec<&str> =
        metrics.lines().filter(|l| l.starts_with("sessiond_http_requests_total{")).collect::<Vec<_>>();
    eprintln!("requests by route and status:\n  {}", reached.join("\n  "));
    let count = |route: &str, status: &str| -> u64 {
        let key = format!(r#"route="{route}",status="{status}"}}"#);
        reached.iter().filter(|l| l.contains(&key)).filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).sum()
    };
    for (route, status) in [("/v1/auth/register", "201"), ("/v1/auth/login", "200"), ("/v1/auth/refresh", "200")] {
        assert!(count(route, status) > 0, "the stateful runs never got {status} from {route}");
    }
    // A 5xx is a failure even where schemathesis would not notice it (e.g. in a link's setup).
    let log = server.log_text();
    assert!(!log.contains("internal error"), "the server logged internal errors:\n{log}");
}

/// Runs schemathesis to the end (10 minutes at most) and fails the test on any failure. Its
/// output (pages of progress and warnings) goes to `target/schemathesis/<name>.log`, and is
/// shown only when the run fails.
fn run(cmd: &[String], args: &[String], dir: &Path, server: &Server) {
    let reports = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/schemathesis");
    std::fs::create_dir_all(&reports).unwrap();
    let name = args.iter().position(|a| a == "--report-junit-path").and_then(|i| args.get(i + 1));
    let name = name.and_then(|p| Path::new(p).file_stem()).map_or("run".into(), |s| s.to_string_lossy().to_string());
    let log_path = reports.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    eprintln!("$ {} {}", cmd.join(" "), args.join(" "));
    // From a temp dir: schemathesis keeps its example database in the working directory.
    let mut child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .args(args)
        .current_dir(dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("schemathesis starts");
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("schemathesis did not finish in 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        status.success(),
        "schemathesis found failures; its output ({}):\n{}\nserver log:\n{}",
        log_path.display(),
        std::fs::read_to_string(&log_path).unwrap_or_default(),
        server.log_text()
    );
}
