//! HTTP/1.1 connections to a plain `http` endpoint (an egress proxy that speaks HTTP/1.1, the
//! sandbox): a call opens one only when none is idle, so no more are open at once than the
//! most calls in flight, and gives it back once its answer is read; one unused for
//! [`H1Pool::new`]'s `idle_timeout` is closed by the next call or the sweep that runs every
//! half timeout (60-90 s in the service).
//!
//! hyper's pooled client starts a connect whenever no idle connection is at hand, and keeps
//! it when another call's connection came back first: at 1,024 calls in flight it held up to
//! 1,391 sockets, and it boxed about 4 KB of state for every call. An HTTP/1.1 connection
//! costs about 28 KB in hyper (its request channel, its write and read buffers, its task),
//! so the sockets it opens beyond the calls in flight cost memory too (README, Benchmark).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, Uri};
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service as _;

/// Why a call got no answer's head: each keeps its cause, which says whether it timed out.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("connecting")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("HTTP/1.1 handshake")]
    Handshake(#[source] hyper::Error),
    #[error("sending the call")]
    Send(#[source] hyper::Error),
}

/// The idle connections of one endpoint, the most recently used on top.
pub struct H1Pool {
    /// Opens the TCP connections (keepalive, connect timeout: the client's settings).
    tcp: HttpConnector,
    /// `http://host:port`, where every connection goes.
    target: Uri,
    /// The `Host` header of every call.
    host: HeaderValue,
    /// Open connections no call holds, the oldest first.
    idle: Mutex<VecDeque<Idle>>,
    /// The most idle connections kept; one more given back is closed.
    max_idle: usize,
    /// How long an idle connection is kept.
    idle_timeout: Duration,
    /// Whether the task that closes idle connections runs (started by the first connect:
    /// the pool is built before the runtime runs).
    sweeping: AtomicBool,
}

struct Idle {
    /// The connection.
    sender: SendRequest<Full<Bytes>>,
    /// When it was given back.
    since: Instant,
}

/// A connection lent to one call. [`Lease::release`] gives it back once the answer is read;
/// dropped without it (a timeout, a broken answer) the connection is closed.
pub struct Lease<'a> {
    /// Where it goes back to.
    pool: &'a H1Pool,
    /// The connection.
    sender: SendRequest<Full<Bytes>>,
}

impl Lease<'_> {
    /// Gives the connection back, unless the server closed it or the pool is full.
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let mut idle = self.pool.lock();
        self.pool.close_expired(&mut idle);
        if idle.len() >= self.pool.max_idle {
            // Full: those the server closed make room before this one is turned away.
            idle.retain(|i| !i.sender.is_closed());
        }
        if idle.len() < self.pool.max_idle {
            idle.push_back(Idle {
                sender: self.sender,
                since: Instant::now(),
            });
        }
    }
}

impl H1Pool {
    /// A pool of connections to `authority` over `tcp`; none is opened before a call.
    pub fn new(
        tcp: HttpConnector,
        authority: &Authority,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Result<Self, http::Error> {
        Ok(Self {
            tcp,
            target: Uri::builder()
                .scheme("http")
                .authority(authority.clone())
                .path_and_query("/")
                .build()?,
            host: HeaderValue::from_str(authority.as_str())?,
            idle: Mutex::default(),
            max_idle,
            idle_timeout,
            sweeping: AtomicBool::new(false),
        })
    }

    /// Sends `request` (its URI in origin form, the path only) on an idle connection, or on
    /// a new one when none is idle. A call that an idle connection closed by the server did
    /// not take goes on the next connection.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Lease<'_>), H1Error> {
        request.headers_mut().insert(HOST, self.host.clone());
        loop {
            let (mut sender, reused) = match self.take_idle() {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            match sender.ready().await {
                Ok(()) => {}
                Err(_) if reused => continue,
                Err(e) => return Err(H1Error::Send(e)),
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    return Ok((response, Lease { pool: self, sender }));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(H1Error::Send(e.into_error())),
                },
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        // The list stays consistent whatever panicked while holding it.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Closes the connections idle past the timeout (the oldest are first).
    fn close_expired(&self, idle: &mut VecDeque<Idle>) {
        while idle
            .front()
            .is_some_and(|oldest| oldest.since.elapsed() >= self.idle_timeout)
        {
            idle.pop_front();
        }
    }

    /// The most recently used open connection.
    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.lock();
        self.close_expired(&mut idle);
        while let Some(Idle { sender, .. }) = idle.pop_back() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    async fn connect(self: &Arc<Self>) -> Result<SendRequest<Full<Bytes>>, H1Error> {
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(self), self.idle_timeout));
        }
        let io = self
            .tcp
            .clone()
            .call(self.target.clone())
            .await
            .map_err(|e| H1Error::Connect(e.into()))?;
        let (sender, connection) = http1::handshake(io).await.map_err(H1Error::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "annotate connection ended");
            }
        });
        Ok(sender)
    }
}

/// Closes idle connections past their timeout, and forgets those the server closed, while
/// no call comes to do it; ends with the pool.
async fn sweep(pool: Weak<H1Pool>, idle_timeout: Duration) {
    let mut tick = tokio::time::interval((idle_timeout / 2).max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let mut idle = pool.lock();
        pool.close_expired(&mut idle);
        idle.retain(|i| !i.sender.is_closed());
    }
}

#[cfg(test)]
#[path = "h1_tests.rs"]
mod tests;
