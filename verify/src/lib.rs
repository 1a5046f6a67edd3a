//! sessiond-verify (crate docs to come).
#![forbid(unsafe_code)]

pub mod bearer;
pub mod cache;
pub mod keys;
pub mod problem;
pub mod token;

#[cfg(feature = "client")]
mod clock;
#[cfg(feature = "client")]
pub mod denylist;
#[cfg(feature = "client")]
pub mod feed;
#[cfg(feature = "client")]
pub mod jwks;
#[cfg(feature = "client")]
pub mod sse;
#[cfg(feature = "client")]
mod verifier;

#[cfg(feature = "axum")]
mod axum;

#[cfg(all(test, feature = "client"))]
mod fake_issuer;
#[cfg(test)]
mod testkit;

pub use bearer::bearer_token;
pub use cache::VerifiedCache;
pub use keys::{KeyError, KeySet};
pub use problem::Rejection;
pub use token::{check_times, verify, Claims, Policy, Verified, VerifyError};

#[cfg(feature = "client")]
pub use verifier::{BuildError, Status, Verifier, VerifierBuilder};

#[cfg(feature = "axum")]
pub use crate::axum::{Authenticated, VerifyLayer, VerifyService};
