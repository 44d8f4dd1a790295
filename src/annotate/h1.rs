//! HTTP/1.1 connections to a plain `http` endpoint (an egress proxy that speaks HTTP/1.1, the
//! sandbox): never more than the calls in flight, each reused until it closes or idles out.
//!
//! hyper's pooled client starts a connect whenever no idle connection is at hand, and keeps
//! it when another call's connection came back first: at 1,024 calls in flight it held up to
//! 1,391 sockets, and it boxed about 4 KB of state for every call. An HTTP/1.1 connection
//! costs about 19 KB in hyper (its request channel, its write and read buffers, its task), so
//! here a call opens a connection only when none is idle and gives it back once its answer is
//! read (README, Benchmark).

use std::collections::VecDeque;
use std::sync::Mutex;
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

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The idle connections of one endpoint, the most recently used on top.
pub struct H1Pool {
    tcp: HttpConnector,
    /// `http://host:port`, where every connection goes.
    target: Uri,
    /// The `Host` header of every call.
    host: HeaderValue,
    /// The read buffer of each connection (see `H1_READ_BUFFER`).
    read_buffer: usize,
    idle: Mutex<VecDeque<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
}

struct Idle {
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

/// A connection lent to one call. [`Lease::release`] gives it back once the answer is read;
/// dropped without it (a timeout, a broken answer) the connection is closed.
pub struct Lease<'a> {
    pool: &'a H1Pool,
    sender: SendRequest<Full<Bytes>>,
}

impl Lease<'_> {
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let mut idle = self.pool.lock();
        if idle.len() < self.pool.max_idle {
            idle.push_back(Idle {
                sender: self.sender,
                since: Instant::now(),
            });
        }
    }
}

impl H1Pool {
    pub fn new(
        tcp: HttpConnector,
        authority: &Authority,
        read_buffer: usize,
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
            read_buffer,
            idle: Mutex::default(),
            max_idle,
            idle_timeout,
        })
    }

    /// Sends `request` (its URI in origin form, the path only) on an idle connection, or on
    /// a new one when none is idle. A call that an idle connection closed by the server did
    /// not take goes on the next connection.
    pub async fn send(
        &self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Lease<'_>), BoxError> {
        request.headers_mut().insert(HOST, self.host.clone());
        loop {
            let (mut sender, reused) = match self.take_idle() {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            match sender.ready().await {
                Ok(()) => {}
                Err(_) if reused => continue,
                Err(e) => return Err(e.into()),
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    return Ok((response, Lease { pool: self, sender }));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(e.into_error().into()),
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

    /// The most recently used open connection; those idle past the timeout are closed.
    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.lock();
        while idle
            .front()
            .is_some_and(|oldest| oldest.since.elapsed() >= self.idle_timeout)
        {
            idle.pop_front();
        }
        while let Some(Idle { sender, .. }) = idle.pop_back() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, BoxError> {
        let io = self.tcp.clone().call(self.target.clone()).await?;
        let (sender, connection) = http1::Builder::new()
            .read_buf_exact_size(Some(self.read_buffer))
            .handshake(io)
            .await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "annotate connection ended");
            }
        });
        Ok(sender)
    }
}
