//! The revocation feed on several PostgreSQL instances (docs/API.md §9): revocations committed
//! concurrently on two instances sharing one database reach followers paging with `after`
//! exactly once each, none skipped, although the log's ids are allocated by concurrent
//! transactions (they are allocated under a lock held until commit: `PgStore::revoke_in`).

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::feed::log_rows;
use crate::helpers::*;
use crate::service::feed_reader;

/// Revoking clients, and sessions each ends.
const CLIENTS: usize = 8;
const SESSIONS_PER_CLIENT: usize = 13;

/// Pages through the feed from `after` on the instances `bases` in turn, `limit` at a time
/// (with `wait` seconds of long poll), until `done` is set and a page comes back empty; returns
/// every `(cursor, session_id)` received, in order.
async fn follow(
    client: reqwest::Client,
    bases: [String; 2],
    secret: String,
    mut after: String,
    limit: u32,
    wait: u32,
    done: tokio::sync::watch::Receiver<bool>,
) -> Vec<(i64, String)> {
    let mut seen = Vec::new();
    for turn in 0.. {
        let finished = *done.borrow();
        let url = format!("{}/v1/revocations?after={after}&limit={limit}&wait={wait}", bases[turn % 2]);
        let r = client.get(url).bearer_auth(&secret).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let page: Value = r.json().await.unwrap();
        let list = page["revocations"].as_array().unwrap();
        assert!(list.len() <= limit as usize);
        for e in list {
            let cursor = e["cursor"].as_str().unwrap();
            let id = cursor.split_once('.').expect("EPOCH.ID").1.parse().unwrap();
            seen.push((id, e["session_id"].as_str().unwrap().to_string()));
        }
        after = page["next"].as_str().unwrap().to_string();
        if list.is_empty() && finished {
            break;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_miss_nothing_while_two_instances_revoke_concurrently() {
    let Some(a) = spawn_app().await else { return };
    let b = another_instance(&a).await;
    let reader = feed_reader(&a).await;
    let bases = [a.base.clone(), b.base.clone()];

    // Each client: a user with its sessions, ended one by one on alternating instances, the
    // last two with one logout-all (two entries in one transaction).
    let mut users = Vec::new();
    for _ in 0..CLIENTS {
        let email = a.new_user().await;
        let mut sessions = Vec::new();
        for _ in 0..SESSIONS_PER_CLIENT {
            sessions.push(a.session_of(&email).await);
        }
        users.push(sessions);
    }
    let epoch = a.state.store.feed_epoch().await.unwrap();
    let start = format!("{epoch}.{}", a.state.store.revocation_head().await.unwrap());

    let (done_tx, done) = tokio::sync::watch::channel(false);
    let paging =
        tokio::spawn(follow(a.client.clone(), bases.clone(), reader.clone(), start.clone(), 5, 0, done.clone()));
    let polling = tokio::spawn(follow(b.client.clone(), bases.clone(), reader.clone(), start, 3, 2, done));
    let revokers: Vec<_> = users
        .into_iter()
        .enumerate()
        .map(|(k, sessions)| {
            let (client, bases) = (a.client.clone(), bases.clone());
            tokio::spawn(async move {
                let (single, together) = sessions.split_at(SESSIONS_PER_CLIENT - 2);
                for (i, t) in single.iter().enumerate() {
                    let url = format!("{}/v1/auth/logout", bases[(k + i) % 2]);
                    let r = client.post(url).bearer_auth(&t.access).send().await.unwrap();
                    assert_eq!(r.status(), StatusCode::NO_CONTENT);
                }
                let url = format!("{}/v1/auth/logout-all", bases[k % 2]);
                let r = client.post(url).bearer_auth(&together[0].access).send().await.unwrap();
                assert_eq!(r.status(), StatusCode::OK);
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["revoked_sessions"], 2);
            })
        })
        .collect();
    for r in revokers {
        r.await.unwrap();
    }
    done_tx.send(true).unwrap();
    let followers = [
        tokio::time::timeout(Duration::from_secs(60), paging).await.expect("the pager finishes").unwrap(),
        tokio::time::timeout(Duration::from_secs(60), polling).await.expect("the long poller finishes").unwrap(),
    ];

    let db: Vec<(i64, String)> = log_rows(&a).await.into_iter().map(|(id, s, _)| (id, s)).collect();
    assert_eq!(db.len(), CLIENTS * SESSIONS_PER_CLIENT);
    let sessions: BTreeSet<&str> = db.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(sessions.len(), db.len(), "one entry per session");
    for seen in followers {
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "cursors strictly increase: nothing repeated");
        let missing: Vec<_> = db.iter().filter(|e| !seen.contains(e)).collect();
        assert!(missing.is_empty(), "skipped {} entries: {missing:?}", missing.len());
        assert_eq!(seen, db);
    }
}
