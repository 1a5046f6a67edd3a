//! Integration tests: the real server over real sockets and a real SQLite file.

mod helpers;

mod admin;
mod auth;
mod cli;
mod errors;
mod jwt;
mod keys;
mod refresh;
mod ws;
