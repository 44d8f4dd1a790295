//! The annotate call: authentication, the HTTP client, and the classification of every
//! outcome into what happens next.

pub mod auth;
pub mod client;
pub mod retry;

pub use client::AnnotateClient;
pub use retry::{Backoff, Delivery, RetryCause};
