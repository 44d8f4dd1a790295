//! HTTP/1.1 connections to a plain `http` endpoint (an egress proxy that speaks HTTP/1.1, the
//! sandbox): a call opens one only when none is idle, so no more are open at once than the
//! most calls in flight, and gives it back once its answer is read; one unused for
//! [`H1Pool::new`]'s `idle_timeout` is closed by the next call or the sweep that runs every
//! half timeout (60-90 s in the service).
//!
//! A connection is the socket alone, and the call that holds it reads its answer itself
//! (`exchange.rs`): no task, channel or buffer stays with it. hyper's HTTP/1.1 connection costs
//! about 28 KB whether a call waits on it or not, and its pooled client opened up to 1,391
//! sockets at 1,024 calls in flight and boxed about 4 KB of state for every call (README,
//! Benchmark).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Uri};
use http::{HeaderMap, HeaderName, HeaderValue};
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::net::TcpStream;
use tower_service::Service as _;

use super::exchange::{self, Failed, H1Error, Reply};

/// The idle connections of one endpoint, the most recently used on top.
pub struct H1Pool {
    /// Opens the TCP connections (keepalive, connect timeout: the client's settings).
    tcp: HttpConnector,
    /// `http://host:port`, where every connection goes.
    target: Uri,
    /// The header lines every call carries before its own: `host`, then the fixed ones.
    fixed: Vec<u8>,
    /// Open connections no call holds, the oldest first.
    idle: Mutex<VecDeque<Idle>>,
    /// The most idle connections kept; a full pool closes its oldest for one given back.
    max_idle: usize,
    /// How long an idle connection is kept.
    idle_timeout: Duration,
    /// The most of an answer's body kept.
    max_body: usize,
    /// Whether the task that closes idle connections runs (started by the first connect:
    /// the pool is built before the runtime runs).
    sweeping: AtomicBool,
}

/// A connection no call holds.
struct Idle {
    /// The connection.
    stream: TcpStream,
    /// When it was given back.
    since: Instant,
}

/// How a pool is sized and what its calls carry.
pub struct H1Settings<'a> {
    /// The header fields every call carries (besides `host` and `content-length`).
    pub fixed: &'a [(HeaderName, HeaderValue)],
    /// The most idle connections kept.
    pub max_idle: usize,
    /// How long an idle connection is kept.
    pub idle_timeout: Duration,
    /// The most of an answer's body kept.
    pub max_body: usize,
}

impl H1Pool {
    /// A pool of connections to `authority` over `tcp`; none is opened before a call.
    pub fn new(
        tcp: HttpConnector,
        authority: &Authority,
        settings: &H1Settings<'_>,
    ) -> Result<Self, http::Error> {
        let mut fixed = format!("host: {}\r\n", authority.as_str()).into_bytes();
        for (name, value) in settings.fixed {
            exchange::push_field(&mut fixed, name, value);
        }
        Ok(Self {
            tcp,
            target: Uri::builder()
                .scheme("http")
                .authority(authority.clone())
                .path_and_query("/")
                .build()?,
            fixed,
            idle: Mutex::default(),
            max_idle: settings.max_idle,
            idle_timeout: settings.idle_timeout,
            max_body: settings.max_body,
            sweeping: AtomicBool::new(false),
        })
    }

    /// `POST`s `body` to `path` (origin form) with `headers` on an idle connection, or on a
    /// new one when none is idle, and reads the answer; the connection goes back to the pool
    /// when it can carry the next call. A call an idle connection could not send (the server
    /// had closed it) goes on the next connection; one that may have reached the server is
    /// not sent again.
    pub async fn call(
        self: &Arc<Self>,
        path: &PathAndQuery,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Reply, Failed> {
        loop {
            let (mut stream, reused) = match self.take_idle() {
                Some(stream) => (stream, true),
                None => (self.connect().await?, false),
            };
            let request = exchange::encode(path.as_str(), &self.fixed, headers, body);
            match exchange::exchange(&mut stream, request, self.max_body).await {
                Ok(reply) => {
                    if reply.reusable {
                        self.give_back(stream);
                    }
                    return Ok(reply);
                }
                Err(Failed {
                    error: H1Error::Send(_),
                    ..
                }) if reused => {}
                Err(failed) => return Err(failed),
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
    fn take_idle(&self) -> Option<TcpStream> {
        let mut idle = self.lock();
        self.close_expired(&mut idle);
        while let Some(Idle { stream, .. }) = idle.pop_back() {
            if is_open(&stream) {
                return Some(stream);
            }
        }
        None
    }

    /// Keeps `stream` for the next call; a full pool closes its oldest for it.
    fn give_back(&self, stream: TcpStream) {
        if self.max_idle == 0 {
            return;
        }
        let mut idle = self.lock();
        self.close_expired(&mut idle);
        if idle.len() >= self.max_idle {
            idle.pop_front();
        }
        idle.push_back(Idle {
            stream,
            since: Instant::now(),
        });
    }

    async fn connect(self: &Arc<Self>) -> Result<TcpStream, H1Error> {
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(self), self.idle_timeout));
        }
        let io = self
            .tcp
            .clone()
            .call(self.target.clone())
            .await
            .map_err(|e| H1Error::Connect(e.into()))?;
        Ok(io.into_inner())
    }
}

/// Whether an idle connection is still open: the server has neither closed it nor sent
/// anything (an idle connection has nothing to read). Asks the kernel: the runtime's
/// readiness may not have seen the server's close yet.
fn is_open(stream: &TcpStream) -> bool {
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit()];
    matches!(
        socket2::SockRef::from(stream).peek(&mut probe),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    )
}

/// Closes idle connections past their timeout, and those the server closed, while no call
/// comes to do it; ends with the pool.
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
        idle.retain(|i| is_open(&i.stream));
    }
}

#[cfg(test)]
#[path = "h1_tests.rs"]
mod tests;
