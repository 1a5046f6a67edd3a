//! `cluster`: as `revoke`, but the sockets are on instance B and every logout goes to instance
//! A, so each event crosses PostgreSQL `NOTIFY` (two server processes, one database).

use std::time::{Duration, Instant};

use crate::common::*;
use crate::scenarios::{latency_rows, open_loop_logouts, Db};
use crate::Args;

pub async fn run(args: &Args) -> Vec<String> {
    let dir = TempDir::new();
    let db = Db::new(args, &dir, true).await;
    let a = Server::start(&db.url, free_port(), &[]).await;
    let b = Server::start(&db.url, free_port(), &[]).await;
    let minter = Minter::new(&db.url, &a.base()).await;
    let idle: Vec<String> = minter.mint(args.idle).await.into_iter().map(|m| m.access).collect();
    let _idle = spawn_workers(&b.ws(), &idle, 9_500, &dir, false);
    let measured = minter.mint(args.revokes()).await;
    let tokens: Vec<String> = measured.iter().map(|m| m.access.clone()).collect();
    let mut worker = Worker::spawn(&b.ws(), &tokens, &dir, false);
    assert_eq!(worker.wait_ready().1, 0);
    let times = open_loop_logouts(&a.base(), &measured, args.rate()).await;
    let mut arrivals = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while arrivals.len() < measured.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        arrivals = worker.report("logouts");
    }
    let out = latency_rows(&times, &arrivals);
    drop(worker);
    drop((a, b));
    db.drop_db().await;
    out
}
