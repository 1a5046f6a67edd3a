//! sessiond-verify (crate docs to come).
#![forbid(unsafe_code)]

pub mod bearer;
pub mod cache;
pub mod keys;
pub mod problem;
pub mod token;

#[cfg(test)]
mod testkit;

pub use bearer::bearer_token;
pub use cache::VerifiedCache;
pub use keys::{KeyError, KeySet};
pub use problem::Rejection;
pub use token::{check_times, verify, Claims, Policy, Verified, VerifyError};
