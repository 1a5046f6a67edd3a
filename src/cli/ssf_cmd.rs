//! `sessiond ssf stream …` and `sessiond ssf redeliver` (docs/SSF.md §1.3): the operator's
//! side of Shared Signals, for push-only receivers (Okta) that never call the management API.
//! Each command talks to the database through the same [`Ssf`] service the HTTP API uses; a
//! running server picks the changes up within a second (its dispatcher rechecks the outbox).

use anyhow::Context;
use serde_json::json;

use crate::audit::Who;
use crate::clock::{rfc3339, Clock, Millis};
use crate::config::{Config, SsfCommand, SsfStreamCommand};
use crate::error::AppError;
use crate::feed::FeedSignal;
use crate::service_credentials::{self, Scope};
use crate::ssf::{events, Owner, Settings, Ssf, PUSH};
use crate::store::Store;

pub async fn run(cmd: SsfCommand, config: &Config) -> anyhow::Result<()> {
    let db = match &cmd {
        SsfCommand::Redeliver { db, .. } => db,
        SsfCommand::Stream(s) => match s {
            SsfStreamCommand::Add { db, .. }
            | SsfStreamCommand::List { db }
            | SsfStreamCommand::Show { db, .. }
            | SsfStreamCommand::Pause { db, .. }
            | SsfStreamCommand::Enable { db, .. }
            | SsfStreamCommand::Disable { db, .. }
            | SsfStreamCommand::Remove { db, .. } => db,
        },
    };
    let store = Store::connect(db.url(config)).await?;
    store.migrate().await?;
    let clock = Clock::system();
    let ssf = Ssf::new(
        store.clone(),
        clock.clone(),
        Settings::from_config(config),
        FeedSignal::default(),
        Default::default(),
    );
    let res = command(&ssf, &store, &clock, cmd).await;
    store.close().await;
    res
}

fn explain(e: AppError) -> anyhow::Error {
    match e {
        AppError::NotFound => anyhow::anyhow!("no such stream"),
        AppError::StreamExists => anyhow::anyhow!("this service credential has a stream already (one per credential)"),
        AppError::InvalidRequest(d) => anyhow::anyhow!("{d}"),
        e => anyhow::anyhow!("{e}"),
    }
}

async fn command(ssf: &Ssf, store: &Store, clock: &Clock, cmd: SsfCommand) -> anyhow::Result<()> {
    let who = Who::system();
    match cmd {
        SsfCommand::Redeliver { id, since, .. } => {
            let since = match since.as_deref() {
                None => 0,
                Some(s) => parse_since(s, clock.now_ms())?,
            };
            store.ssf_stream(&id).await?.ok_or_else(|| anyhow::anyhow!("no such stream"))?;
            let n = store.ssf_redeliver(&id, since, clock.now_ms()).await?;
            eprintln!("re-queued {n} dead letter(s) of {id}");
            Ok(())
        }
        SsfCommand::Stream(SsfStreamCommand::Add {
            service, push, auth_header, events: evs, event_subject, ..
        }) => {
            let cred = service_credentials::list(store)
                .await?
                .into_iter()
                .find(|c| c.name == service.as_str())
                .ok_or_else(|| anyhow::anyhow!("no service credential named {service}"))?;
            anyhow::ensure!(cred.has(Scope::Ssf), "service credential {service} lacks the scope ssf");
            let requested: Vec<String> =
                if evs.is_empty() { events::SUPPORTED.iter().map(|s| s.to_string()).collect() } else { evs };
            let mut delivery = json!({ "method": PUSH, "endpoint_url": push });
            if let Some(a) = auth_header {
                delivery["authorization_header"] = json!(a);
            }
            let body = json!({ "delivery": delivery, "events_requested": requested });
            let aud = cred.ssf_aud().unwrap_or(&cred.name).to_string();
            let owner = Owner { id: &cred.id, name: &cred.name };
            let config = ssf.create(owner, &aud, &body, event_subject, &who).await.map_err(explain)?;
            eprintln!(
                "created push stream for {service}: events {}",
                config["events_delivered"].as_array().map(|a| a.len()).unwrap_or(0)
            );
            println!("{}", config["stream_id"].as_str().unwrap_or_default());
            Ok(())
        }
        SsfCommand::Stream(SsfStreamCommand::List { .. }) => {
            let streams = store.ssf_streams().await?;
            let counts = store.ssf_counts().await?;
            if streams.is_empty() {
                eprintln!("no streams (a receiver creates one with POST /ssf/stream, or `sessiond ssf stream add`)");
            }
            let rows: Vec<[String; 7]> = streams
                .into_iter()
                .map(|s| {
                    let c = counts.iter().find(|c| c.stream_id == s.id);
                    let (pending, dead) = c.map_or((0, 0), |c| (c.pending, c.dead));
                    [s.id, s.owner, s.method, s.status, s.health, pending.to_string(), dead.to_string()]
                })
                .collect();
            print!("{}", super::aligned(["ID", "OWNER", "METHOD", "STATUS", "HEALTH", "PENDING", "DEAD"], &rows));
            Ok(())
        }
        SsfCommand::Stream(SsfStreamCommand::Show { id, .. }) => {
            let s = store.ssf_stream(&id).await?.ok_or_else(|| anyhow::anyhow!("no such stream"))?;
            let mut config = ssf.config_json(&s);
            if let Some(d) = config.get_mut("delivery").and_then(|d| d.as_object_mut()) {
                if d.remove("authorization_header").is_some() {
                    d.insert("authorization_header".into(), json!("(set, not shown)"));
                }
            }
            let undelivered = store.ssf_undelivered(&id, 1000).await?;
            let show = |t: Option<Millis>| t.map_or_else(|| "never".to_string(), rfc3339);
            let list: Vec<_> = undelivered
                .iter()
                .map(|d| {
                    json!({
                        "jti": d.jti, "event": d.kind, "state": d.state, "attempts": d.attempts,
                        "next_attempt_at": rfc3339(d.next_attempt_at), "last_error": d.last_error,
                        "created_at": rfc3339(d.created_at),
                    })
                })
                .collect();
            let out = json!({
                "owner": s.owner, "config": config, "status": s.status, "reason": s.status_reason,
                "health": s.health, "last_success_at": show(s.last_success_at), "last_error": s.last_error,
                "pending": list.iter().filter(|d| d["state"] == "pending").cloned().collect::<Vec<_>>(),
                "dead_letters": list.iter().filter(|d| d["state"] == "dead").cloned().collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        SsfCommand::Stream(SsfStreamCommand::Pause { id, reason, .. }) => {
            status(ssf, &id, "paused", reason, &who).await
        }
        SsfCommand::Stream(SsfStreamCommand::Enable { id, reason, .. }) => {
            status(ssf, &id, "enabled", reason, &who).await
        }
        SsfCommand::Stream(SsfStreamCommand::Disable { id, reason, .. }) => {
            status(ssf, &id, "disabled", reason, &who).await
        }
        SsfCommand::Stream(SsfStreamCommand::Remove { id, .. }) => {
            ssf.remove(&id, &who).await.map_err(explain)?;
            eprintln!("removed stream {id} and the SETs it held");
            Ok(())
        }
    }
}

async fn status(ssf: &Ssf, id: &str, to: &str, reason: Option<String>, who: &Who) -> anyhow::Result<()> {
    ssf.set_status(id, to, reason.as_deref(), true, who).await.map_err(explain)?;
    eprintln!("stream {id} is {to}; a stream-updated event tells the receiver");
    Ok(())
}

/// `--since`: an RFC 3339 time, or a duration ago (`2h`).
fn parse_since(s: &str, now: Millis) -> anyhow::Result<Millis> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        let d = t.duration_since(std::time::UNIX_EPOCH).context("a time before 1970")?;
        return Ok(d.as_millis() as Millis);
    }
    let ago = humantime::parse_duration(s).context("--since takes an RFC 3339 time or a duration such as 2h")?;
    Ok(now - ago.as_millis() as Millis)
}
