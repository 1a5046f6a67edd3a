//! A rolling restart behind a load balancer loses nothing (issue 21; docs/API.md §14): two
//! instances behind a tiny round-robin TCP balancer that sends new connections only to
//! instances whose `/readyz` answers 200 (polled every 50 ms, as a balancer's health check),
//! restarted one after the other under steady traffic and open sockets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sessiond::clock::Clock;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

/// The balancer: backends, and which of them answered `/readyz` 200 at the last check.
struct Balancer {
    addr: SocketAddr,
    backends: Arc<Mutex<Vec<(SocketAddr, bool)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn addr_of(app: &TestApp) -> SocketAddr {
    app.base.trim_start_matches("http://").parse().unwrap()
}

impl Balancer {
    async fn start(backends: &[&TestApp]) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let list: Arc<Mutex<Vec<(SocketAddr, bool)>>> =
            Arc::new(Mutex::new(backends.iter().map(|b| (addr_of(b), true)).collect()));
        let health = {
            let list = list.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_millis(500)).build().unwrap();
                loop {
                    let now: Vec<SocketAddr> = list.lock().unwrap().iter().map(|b| b.0).collect();
                    for backend in now {
                        let ready = matches!(
                            client.get(format!("http://{backend}/readyz")).send().await,
                            Ok(r) if r.status() == StatusCode::OK
                        );
                        if let Some(b) = list.lock().unwrap().iter_mut().find(|b| b.0 == backend) {
                            b.1 = ready;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        let accept = {
            let list = list.clone();
            let next = Arc::new(AtomicUsize::new(0));
            tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else { continue };
                    let (list, next) = (list.clone(), next.clone());
                    tokio::spawn(async move {
                        // Round robin over the ready backends; a refused connect tries the next.
                        let ready: Vec<SocketAddr> = list.lock().unwrap().iter().filter(|b| b.1).map(|b| b.0).collect();
                        let start = next.fetch_add(1, Ordering::Relaxed);
                        for i in 0..ready.len() {
                            let backend = ready[(start + i) % ready.len()];
                            if let Ok(mut outbound) = TcpStream::connect(backend).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                                return;
                            }
                        }
                    });
                }
            })
        };
        Balancer { addr, backends: list, tasks: vec![health, accept] }
    }

    /// Replaces backend `old` with `new` (new ones start unready until their first check).
    fn replace(&self, old: SocketAddr, new: SocketAddr) {
        let mut list = self.backends.lock().unwrap();
        list.retain(|b| b.0 != old);
        list.push((new, false));
    }
}

/// One client socket through the balancer, reconnecting (and authenticating again) whenever
/// the server closes it, until `stop`; returns how often it reconnected and whether it ended
/// authenticated.
async fn socket_loop(balancer: SocketAddr, access: String, stop: tokio_util::sync::CancellationToken) -> (usize, bool) {
    let mut reconnects = 0;
    loop {
        let url = format!("ws://{balancer}/v1/ws");
        let (mut ws, _) = match tokio_tungstenite::connect_async(url).await {
            Ok(ok) => ok,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        ws.send(Message::Text(json!({ "type": "auth", "access_token": access }).to_string().into())).await.unwrap();
        let mut ready = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return (reconnects, ready),
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(&t).unwrap();
                        if v["type"] == "ready" {
                            ready = true;
                        } else if v["type"] == "logout" {
                            panic!("a logout during a restart: {v}");
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let code = frame.map(|f| u16::from(f.code));
                        assert_eq!(code, Some(1012), "closed otherwise than for a restart");
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
        }
        reconnects += 1;
    }
}

/// Two instances restarted one after the other behind the balancer: every request sent through
/// it during the whole roll is answered (none fails: no refused or broken connection, no 5xx),
/// and every socket is closed with 1012, reconnects through the balancer and is authenticated
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_behind_a_balancer_loses_nothing() {
    let Some(first) = spawn_app_with(|c| c.shutdown_delay = Duration::from_millis(300)).await else { return };
    let second = another_instance(&first).await;
    let balancer = Balancer::start(&[&first, &second]).await;
    let base = format!("http://{}", balancer.addr);
    // A new connection per request: each is balanced on its own, as a balancer does per request.
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).build().unwrap();
    let t = first.new_session().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let sockets: Vec<_> =
        (0..8).map(|_| tokio::spawn(socket_loop(balancer.addr, t.access.clone(), stop.clone()))).collect();
    let (done, failures, answered) = (
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(AtomicUsize::new(0)),
    );
    let traffic = {
        let (client, base, access, refresh) = (client.clone(), base.clone(), t.access.clone(), t.refresh.clone());
        let (done, failures, answered) = (done.clone(), failures.clone(), answered.clone());
        tokio::spawn(async move {
            let mut refresh = refresh;
            while !done.load(Ordering::Relaxed) {
                match client.get(format!("{base}/v1/me")).bearer_auth(&access).send().await {
                    Ok(r) if r.status() == StatusCode::OK => {}
                    Ok(r) => failures.lock().unwrap().push(format!("/v1/me {}", r.status())),
                    Err(e) => failures.lock().unwrap().push(format!("/v1/me {e}")),
                }
                let r = client
                    .post(format!("{base}/v1/auth/refresh"))
                    .json(&json!({ "refresh_token": refresh }))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == StatusCode::OK => {
                        refresh = r.json::<Value>().await.unwrap()["refresh_token"].as_str().unwrap().to_string();
                    }
                    Ok(r) => failures.lock().unwrap().push(format!("refresh {}", r.status())),
                    Err(e) => failures.lock().unwrap().push(format!("refresh {e}")),
                }
                answered.fetch_add(2, Ordering::Relaxed);
            }
        })
    };
    // Every socket authenticated before the roll.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while first.state.hub.len() + second.state.hub.len() < 8 {
        assert!(tokio::time::Instant::now() < deadline, "the sockets never all authenticated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut running = vec![first, second];
    for _ in 0..2 {
        let mut old = running.remove(0);
        let old_addr = addr_of(&old);
        let config = old.config.clone();
        old.stop().await;
        let mut fresh_config = config;
        fresh_config.listen = "127.0.0.1:0".parse().unwrap();
        let fresh = start_on(fresh_config, old.dir.clone(), Clock::system(), old.db.clone()).await;
        balancer.replace(old_addr, addr_of(&fresh));
        running.push(fresh);
        // The balancer sees the new one ready before the next goes down.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Every socket is back and authenticated.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while running.iter().map(|a| a.state.hub.len()).sum::<usize>() < 8 {
        assert!(tokio::time::Instant::now() < deadline, "the sockets never all came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    stop.cancel();
    let mut reconnects = Vec::new();
    for s in sockets {
        let (n, ready) = tokio::time::timeout(Duration::from_secs(5), s).await.expect("a socket loop ended").unwrap();
        assert!(ready, "a socket ended unauthenticated");
        reconnects.push(n);
    }
    let failures = failures.lock().unwrap().clone();
    eprintln!(
        "rolling restart: {} requests answered, {} failed; socket reconnects {reconnects:?}",
        answered.load(Ordering::Relaxed),
        failures.len()
    );
    assert!(failures.is_empty(), "requests failed during the roll: {failures:?}");
    assert!(reconnects.iter().all(|n| *n >= 1), "a socket never reconnected: {reconnects:?}");
    assert!(answered.load(Ordering::Relaxed) > 20, "too little traffic to show anything");
}
