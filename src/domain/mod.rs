//! Pure types and decisions: no IO, no Kafka, no HTTP.

pub mod account;
pub mod api;
pub mod assessment;
pub mod event;
pub mod rules;
pub mod schema;
