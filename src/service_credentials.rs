//! Service credentials (docs/API.md §8): how the app's other services (its APIs, workers, an
//! SSF receiver) authenticate to sessiond.
//!
//! A credential is a name, a set of [`Scope`]s and a secret `sk_` + 43 base64url characters
//! (32 random bytes, 256 bits), shown once when it is created (`sessiond service add`). The
//! database keeps only `SHA-256(secret)`; a request is matched by looking that digest up, so no
//! secret is ever compared byte by byte, and removing the row (`sessiond service remove`) makes
//! the secret unknown to every instance at its next request (there is no cache). Creating and
//! removing one is audited (`service_created`, `service_removed`).
//!
//! A credential with scope `ssf` also has the `aud` of its Shared Signals stream (docs/SSF.md
//! §1.3: `--ssf-aud`, by default its name), and may obtain short-lived SSF access tokens from
//! `POST /oauth2/token` ([`crate::tokens::ssf`]).
//!
//! The HTTP side (the `ServiceCaller` extractor and its 401/403 rules) is
//! [`crate::http::service`]; the Shared Signals caller is [`crate::http::ssf_auth`].

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::audit::{self, Event, Who};
use crate::clock::Millis;
use crate::store::{ServiceCredentialRow, Store, StoreResult};

/// What a credential may do (docs/API.md §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// The revocation feed (docs/API.md §9).
    RevocationsRead,
    /// Token introspection (docs/API.md §10).
    Introspect,
    /// The Shared Signals stream management API and poll delivery (docs/API.md §11).
    Ssf,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::RevocationsRead, Scope::Introspect, Scope::Ssf];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::RevocationsRead => "revocations:read",
            Scope::Introspect => "introspect",
            Scope::Ssf => "ssf",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| {
            let known: Vec<&str> = Scope::ALL.iter().map(|c| c.as_str()).collect();
            format!("unknown scope {s:?}: the scopes are {}", known.join(", "))
        })
    }
}

/// A credential's name: 1 to 64 characters of `[A-Za-z0-9._-]` (docs/API.md §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceName(String);

impl ServiceName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ServiceName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err("a service name has 1 to 64 characters, each a letter, a digit, '.', '_' or '-'".into());
        }
        Ok(ServiceName(s.to_string()))
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `aud` of a credential's SSF stream (docs/SSF.md §1.3, SSF §4.1.8: a value that
/// identifies the receiver): 1 to 256 printable ASCII characters, no whitespace. ASCII only, so
/// no look-alike or bidirectional-override characters reach `service list` or a receiver's
/// logs; URIs and plain names fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsfAudience(String);

impl SsfAudience {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for SsfAudience {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = (1..=256).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err("an SSF audience has 1 to 256 printable ASCII characters and no whitespace".into());
        }
        Ok(SsfAudience(s.to_string()))
    }
}

impl fmt::Display for SsfAudience {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

const PREFIX: &str = "sk_";
/// Length of a well-formed secret: prefix + base64url of 32 bytes.
pub const SECRET_LEN: usize = 3 + 43;

/// A service secret in the clear. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceSecret(String);

impl fmt::Debug for ServiceSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServiceSecret([redacted])")
    }
}

impl ServiceSecret {
    /// A new secret from the OS random source.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        ServiceSecret(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// Accepts only the exact shape we issue, so junk (a user's JWT, a refresh token) never
    /// reaches the database.
    pub fn parse(s: &str) -> Option<Self> {
        let body = s.strip_prefix(PREFIX)?;
        if s.len() != SECRET_LEN {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(body).ok()?;
        (bytes.len() == 32).then(|| ServiceSecret(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The stored digest: lookups go by digest, so no secret is compared byte by byte.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }
}

/// A credential as listed (never its secret nor its digest).
#[derive(Debug, Clone)]
pub struct ServiceCredential {
    /// Immutable and never reused: what owns the credential's Shared Signals stream.
    pub id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub created_at: Millis,
    pub last_used_at: Option<Millis>,
    /// The `aud` of its SSF stream as stored (`None`: its name; see [`ServiceCredential::ssf_aud`]).
    pub stored_ssf_aud: Option<String>,
}

impl From<ServiceCredentialRow> for ServiceCredential {
    fn from(row: ServiceCredentialRow) -> Self {
        // A scope this version does not know (written by a newer one) grants nothing here.
        let mut scopes: Vec<Scope> = row.scopes.split_ascii_whitespace().filter_map(|s| s.parse().ok()).collect();
        scopes.sort_unstable();
        scopes.dedup();
        ServiceCredential {
            id: row.id,
            name: row.name,
            scopes,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
            stored_ssf_aud: row.ssf_aud,
        }
    }
}

impl ServiceCredential {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// The `aud` of its SSF stream: `--ssf-aud`, else its name (docs/SSF.md §1.3). `None`
    /// without scope `ssf`.
    pub fn ssf_aud(&self) -> Option<&str> {
        self.has(Scope::Ssf).then(|| self.stored_ssf_aud.as_deref().unwrap_or(&self.name))
    }
}

/// How the scopes are stored: sorted, space-separated.
fn scope_list(scopes: &[Scope]) -> Vec<&'static str> {
    let mut list: Vec<Scope> = scopes.to_vec();
    list.sort_unstable();
    list.dedup();
    list.into_iter().map(Scope::as_str).collect()
}

/// Creates a credential and returns its secret (to be shown once), or `None` when the name is
/// taken. With scope `ssf`, its stream's `aud` is its name. Audited (`service_created`, with
/// the name and scopes).
pub async fn create(
    store: &Store,
    now: Millis,
    name: &ServiceName,
    scopes: &[Scope],
    who: &Who,
) -> StoreResult<Option<ServiceSecret>> {
    let aud = scopes.contains(&Scope::Ssf).then_some(name.as_str());
    insert(store, now, name, scopes, aud, who).await
}

/// Why a credential cannot be created as asked.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// `--ssf-aud` without scope `ssf`: the audience would mean nothing.
    #[error("--ssf-aud needs --scope ssf (the audience is that of the credential's Shared Signals stream)")]
    SsfAudWithoutSsf,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// [`create`] with the `aud` of the credential's SSF stream (`--ssf-aud`; `None`: its name),
/// which needs scope `ssf`. The audience is stored explicitly (the name when `None`), so the
/// table says which `aud` each stream has. Audited (`service_created`, with the name, scopes
/// and `ssf_aud`).
pub async fn create_with_ssf_aud(
    store: &Store,
    now: Millis,
    name: &ServiceName,
    scopes: &[Scope],
    ssf_aud: Option<&SsfAudience>,
    who: &Who,
) -> Result<Option<ServiceSecret>, CreateError> {
    let has_ssf = scopes.contains(&Scope::Ssf);
    if ssf_aud.is_some() && !has_ssf {
        return Err(CreateError::SsfAudWithoutSsf);
    }
    let aud = has_ssf.then(|| ssf_aud.map_or(name.as_str(), SsfAudience::as_str));
    Ok(insert(store, now, name, scopes, aud, who).await?)
}

/// Stores a new credential with `aud` (already checked) and audits it.
async fn insert(
    store: &Store,
    now: Millis,
    name: &ServiceName,
    scopes: &[Scope],
    aud: Option<&str>,
    who: &Who,
) -> StoreResult<Option<ServiceSecret>> {
    let secret = ServiceSecret::generate();
    let list = scope_list(scopes);
    if !store.create_service_credential(name.as_str(), &secret.digest(), &list.join(" "), aud, now).await? {
        return Ok(None);
    }
    let mut detail = json!({ "name": name.as_str(), "scopes": list });
    if let Some(aud) = aud {
        detail["ssf_aud"] = json!(aud);
    }
    audit::record(store, now, who, Event::new("service_created").detail(detail)).await;
    Ok(Some(secret))
}

/// Removes a credential: its secret stops working at the next request on every instance, and
/// its Shared Signals stream is deleted with it, in the same transaction, with every SET it held
/// (SECURITY.md G-1: a removed receiver hears nothing more). False when there is none of that
/// name. Audited (`service_removed`, and `ssf_stream_deleted` for its stream, `by`
/// `service_removed`).
pub async fn remove(store: &Store, now: Millis, name: &ServiceName, who: &Who) -> StoreResult<bool> {
    let Some(streams) = store.remove_service_credential(name.as_str()).await? else { return Ok(false) };
    let detail = json!({ "name": name.as_str(), "streams_deleted": streams });
    audit::record(store, now, who, Event::new("service_removed").detail(detail)).await;
    for id in streams {
        let detail = json!({ "stream_id": id, "owner": name.as_str(), "by": "service_removed" });
        audit::record(store, now, who, Event::new("ssf_stream_deleted").detail(detail)).await;
    }
    Ok(true)
}

/// Every credential, by name.
pub async fn list(store: &Store) -> StoreResult<Vec<ServiceCredential>> {
    Ok(store.service_credentials().await?.into_iter().map(ServiceCredential::from).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_have_the_issued_shape_only() {
        let s = ServiceSecret::generate();
        assert_eq!(s.as_str().len(), SECRET_LEN);
        assert_eq!(ServiceSecret::parse(s.as_str()), Some(s.clone()));
        assert_ne!(ServiceSecret::generate(), s);
        assert!(ServiceSecret::parse(&s.as_str()[..SECRET_LEN - 1]).is_none());
        assert!(ServiceSecret::parse(&format!("rt_{}", &s.as_str()[3..])).is_none(), "a refresh token");
        assert!(ServiceSecret::parse("eyJhbGciOiJFZERTQSJ9.e30.sig").is_none(), "a JWT");
        assert!(!format!("{s:?}").contains(&s.as_str()[3..]));
    }

    #[test]
    fn names_and_scopes_are_checked() {
        for ok in ["a", "notes-api", "worker_1.eu", &"x".repeat(64)] {
            assert!(ok.parse::<ServiceName>().is_ok(), "{ok}");
        }
        for bad in ["", "has space", "slash/name", "ünï", &"x".repeat(65)] {
            assert!(bad.parse::<ServiceName>().is_err(), "{bad}");
        }
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>(), Ok(scope));
        }
        let err = "revocations".parse::<Scope>().unwrap_err();
        assert!(err.contains("revocations:read, introspect, ssf"), "{err}");
    }

    #[test]
    fn stored_scopes_are_sorted_unique_and_unknown_ones_grant_nothing() {
        assert_eq!(scope_list(&[Scope::Ssf, Scope::RevocationsRead, Scope::Ssf]), ["revocations:read", "ssf"]);
        let row = ServiceCredentialRow {
            id: "svc_1".into(),
            name: "n".into(),
            scopes: "ssf future:scope revocations:read".into(),
            created_at: 0,
            last_used_at: None,
            ssf_aud: None,
        };
        let c = ServiceCredential::from(row);
        assert_eq!(c.scopes, [Scope::RevocationsRead, Scope::Ssf]);
        assert!(!c.has(Scope::Introspect));
    }

    #[test]
    fn the_ssf_audience_is_checked_and_defaults_to_the_name() {
        for ok in ["a", "billing", "https://rx.example.com/ssf", "urn:x:y", &"x".repeat(256)] {
            assert_eq!(ok.parse::<SsfAudience>().map(|a| a.to_string()).as_deref(), Ok(ok));
        }
        for bad in ["", " ", "has space", "tab\there", "nl\n", "bell\u{7}", "caf\u{e9}", "\u{202e}x", &"x".repeat(257)]
        {
            let err = bad.parse::<SsfAudience>().unwrap_err();
            assert!(err.contains("1 to 256 printable ASCII"), "{bad:?}: {err}");
        }
        let row = |scopes: &str, aud: Option<&str>| ServiceCredentialRow {
            id: "svc_1".into(),
            name: "billing".into(),
            scopes: scopes.into(),
            created_at: 0,
            last_used_at: None,
            ssf_aud: aud.map(str::to_string),
        };
        assert_eq!(ServiceCredential::from(row("ssf", None)).ssf_aud(), Some("billing"));
        assert_eq!(ServiceCredential::from(row("ssf", Some("rx"))).ssf_aud(), Some("rx"));
        assert_eq!(ServiceCredential::from(row("introspect", Some("rx"))).ssf_aud(), None);
    }
}
