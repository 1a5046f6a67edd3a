//! The WebSocket wire protocol of docs/API.md §5: what clients send and what the server sends.

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;

use crate::clock::{rfc3339, Millis};

/// Close codes (docs/API.md §5).
pub mod close {
    /// Logged out: drop every token now.
    pub const LOGGED_OUT: u16 = 4001;
    /// Not authenticated: refresh, then reconnect.
    pub const UNAUTHENTICATED: u16 = 4401;
    /// No `auth` in time.
    pub const AUTH_TIMEOUT: u16 = 4408;
    /// Too many sockets for this user.
    pub const TOO_MANY: u16 = 4429;
    /// Binary frame.
    pub const UNSUPPORTED: u16 = 1003;
    /// Invalid UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// Protocol violation.
    pub const POLICY: u16 = 1008;
    /// Too large.
    pub const TOO_BIG: u16 = 1009;
    /// Server restarting: reconnect with backoff.
    pub const RESTART: u16 = 1012;
    /// Peer stopped answering pings.
    pub const GOING_AWAY: u16 = 1001;
}

/// A message from the client, after validation.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMessage {
    Auth { access_token: String },
    Ping,
}

/// Why a client message was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not a JSON object with a known `type`: close 1008.
    Violation,
    /// A known type with bad fields: answer `{"type":"error","code":"invalid_request"}`.
    BadFields,
}

/// Parses one text message. Unknown extra fields are ignored.
pub fn parse(text: &str) -> Result<ClientMessage, ParseError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|_| ParseError::Violation)?;
    let obj = value.as_object().ok_or(ParseError::Violation)?;
    match obj.get("type").and_then(|t| t.as_str()) {
        Some("auth") => match obj.get("access_token").and_then(|t| t.as_str()) {
            Some(t) if !t.is_empty() => Ok(ClientMessage::Auth { access_token: t.to_string() }),
            _ => Err(ParseError::BadFields),
        },
        Some("ping") => Ok(ClientMessage::Ping),
        _ => Err(ParseError::Violation),
    }
}

/// A message from the server.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    Ready { user_id: &'a str, session_id: &'a str, expires_at: String },
    Logout { reason: &'a str, session_id: &'a str, at: String },
    Pong,
    Error { code: &'static str },
}

impl ServerMessage<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A session's `logout` event as a ready text frame, serialised once and shared (a cheap
/// reference-counted clone) by every socket of the session.
pub fn logout_frame(reason: &str, session_id: &str, at: Millis) -> Utf8Bytes {
    ServerMessage::Logout { reason, session_id, at: rfc3339(at) }.to_json().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_types_and_flags_the_rest() {
        assert_eq!(parse(r#"{"type":"ping"}"#), Ok(ClientMessage::Ping));
        assert_eq!(
            parse(r#"{"type":"auth","access_token":"x"}"#),
            Ok(ClientMessage::Auth { access_token: "x".into() })
        );
        assert_eq!(parse(r#"{"type":"auth"}"#), Err(ParseError::BadFields));
        assert_eq!(parse(r#"{"type":"auth","access_token":5}"#), Err(ParseError::BadFields));
        assert_eq!(parse(r#"{"type":"nope"}"#), Err(ParseError::Violation));
        assert_eq!(parse(r#"[1,2]"#), Err(ParseError::Violation));
        assert_eq!(parse("not json"), Err(ParseError::Violation));
        assert_eq!(parse(r#"{"type":5}"#), Err(ParseError::Violation));
    }

    #[test]
    fn server_messages_have_the_contract_shape() {
        let m = ServerMessage::Logout { reason: "logout", session_id: "s", at: "t".into() };
        assert_eq!(m.to_json(), r#"{"type":"logout","reason":"logout","session_id":"s","at":"t"}"#);
        assert_eq!(ServerMessage::Pong.to_json(), r#"{"type":"pong"}"#);
    }
}
