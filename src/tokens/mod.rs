//! Tokens: stateless EdDSA access tokens ([`jwt`]) and stateful opaque refresh tokens
//! ([`refresh`]).

pub mod jwt;
pub mod refresh;
