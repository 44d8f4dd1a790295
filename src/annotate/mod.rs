//! The annotate call: authentication and the HTTP client; its answers are classified by
//! [`crate::failure::classify`].

pub mod auth;
pub mod client;
mod exchange;
mod framing;
mod h1;
mod pooled;
mod route;
#[cfg(test)]
mod test_servers;

pub use client::AnnotateClient;
