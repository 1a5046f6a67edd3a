//! Tokens: stateless EdDSA access tokens ([`jwt`]), stateful opaque refresh tokens
//! ([`refresh`]) and the Shared Signals access tokens of service credentials ([`ssf`]).

pub mod jwt;
pub mod refresh;
pub mod ssf;
