//! The integration tests, as one test binary: each module was once a binary of its own.
//! One binary links once and compiles [`common`] once (building the tests took 25 to 50
//! seconds less in fresh clones), and its tests share the test threads, so a long test of one module
//! runs beside the short ones of another instead of alone at the end of its binary.
//!
//! Run one module with its path: `cargo test --test suite budget::`.

#![allow(clippy::unwrap_used)]

mod common;

mod broker_restart;
mod budget;
mod cache;
mod cli;
mod cluster;
mod credentials;
mod delivery;
mod deploy;
mod end_to_end;
mod endpoints;
mod fuzz;
mod halts;
mod kafka_security;
mod kit;
mod operations;
mod prometheus;
mod real_broker;
mod redis_production;
mod samples;
mod sandbox;
mod secrets;
mod standby;
mod status_page;
mod top;
