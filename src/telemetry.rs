//! Logging: structured `tracing` events to stderr, filtered by `RUST_LOG` (default `info`).
//! Spans and events carry ids and reasons, never tokens or passwords.
//!
//! Our own events are written that way; some dependencies' are not. Their targets are capped
//! below by [`caps`], a filter combined with `RUST_LOG`'s by `and`, so no `RUST_LOG` (not even
//! `trace` or `tungstenite=trace`) can turn them back on (SECURITY.md RT9):
//!
//! | target | cap | why |
//! |---|---|---|
//! | `tungstenite`, `tokio_tungstenite` | info | trace prints every frame and message (a socket's `auth` message is a live access token); debug prints the peer's close frames |
//! | `hyper`, `hyper_util`, `h2` | info | trace/debug dump header blocks and frames (`Authorization`, `Cookie`, `Set-Cookie`); hyper is built without its tracing today, `h2` is not in the tree, `hyper_util` logs only in its client: capped so a feature change in the dependency tree cannot start printing them |
//! | `reqwest` | info | the HTTP client (the bench tool): its debug/trace lines print URLs and redirects |
//! | `axum::rejection` | debug | its trace events carry an extractor's rejection text, which can quote the offending query or body value |
//!
//! Left uncapped: `tower_http` (the request span records method, path and status: no headers,
//! and `app::router` leaves the query string out, where clients put tokens in URLs) and `sqlx`
//! (statement text and row counts: values are bound, never printed, and our SQL text holds no
//! secret).

use std::io::IsTerminal;

use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The most each dependency target that may print protocol bytes is allowed to log (see the
/// module doc). Every other target: whatever `RUST_LOG` says.
pub fn caps() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("tungstenite", LevelFilter::INFO)
        .with_target("tokio_tungstenite", LevelFilter::INFO)
        .with_target("hyper", LevelFilter::INFO)
        .with_target("hyper_util", LevelFilter::INFO)
        .with_target("h2", LevelFilter::INFO)
        .with_target("reqwest", LevelFilter::INFO)
        .with_target("axum::rejection", LevelFilter::DEBUG)
}

pub fn init() {
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(env.and(caps()));
    let _ = tracing_subscriber::registry().with(fmt).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn caps_hold_whatever_rust_log_says() {
        let caps = caps();
        for target in ["tungstenite::protocol", "tokio_tungstenite::compat", "hyper::proto::h1", "h2::codec"] {
            assert!(!caps.would_enable(target, &Level::DEBUG), "{target}");
            assert!(caps.would_enable(target, &Level::INFO), "{target}");
        }
        assert!(!caps.would_enable("axum::rejection", &Level::TRACE));
        assert!(caps.would_enable("sessiond::http::auth", &Level::TRACE));
        assert!(caps.would_enable("tower_http::trace::make_span", &Level::DEBUG));
    }
}
