//! One connection to a PostgreSQL server: connect and log in, remember what the server told us
//! (parameters, cancel key), and the bookkeeping the pool needs (age, last use).
//!
//! The socket and its read buffer are owned here; the client session borrows them while the
//! connection is checked out and forwards bytes through them directly.

pub mod exchange;
mod login;
pub mod prepared;
pub mod query;
pub mod reset;
pub mod settings;
pub mod tracker;

pub use login::{ask_for_tls, Credentials, LoginError};

use bytes::BytesMut;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Where a pool's servers are and who to log in as.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub credentials: Credentials,
    pub tls: crate::tls::ServerTls,
    pub tcp: crate::stream::TcpTuning,
}

/// The `tcp_*` settings, for server and client sockets alike.
pub fn tcp_tuning(g: &crate::config::General) -> crate::stream::TcpTuning {
    crate::stream::TcpTuning {
        keepalive: g.tcp_keepalive,
        idle: g.tcp_keepidle,
        interval: g.tcp_keepintvl,
        count: g.tcp_keepcnt,
        user_timeout_ms: g.tcp_user_timeout,
    }
}

impl Target {
    /// Where the server is reached (`stream::address`): host:port, or a Unix socket's path.
    pub fn addr(&self) -> String {
        crate::stream::address(&self.host, self.port)
    }
}

/// What a CancelRequest to this server needs, and whether a client's cancel request was sent
/// to it.
#[derive(Debug)]
pub struct CancelKey {
    pub addr: String,
    pub process_id: i32,
    pub secret_key: i32,
    cancelled: std::sync::atomic::AtomicBool,
    /// Cancel requests on their way to it now (`cancel`): sent, the server not yet done.
    delivering: std::sync::atomic::AtomicU32,
}

impl CancelKey {
    pub fn new(addr: String, process_id: i32, secret_key: i32) -> CancelKey {
        CancelKey {
            addr,
            process_id,
            secret_key,
            cancelled: Default::default(),
            delivering: Default::default(),
        }
    }

    /// How many cancel requests are on their way to this server now.
    pub fn delivering(&self) -> u32 {
        self.delivering.load(Ordering::Relaxed)
    }

    /// Whether a client's cancel request was sent to this server. Such a server is never
    /// pooled again: PostgreSQL may act on a request after it has closed the request's
    /// connection (a backend reading its next message holds the interrupt until it has read
    /// it), and the next query on that backend may be another client's.
    pub fn cancelling(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }
}

/// A client's cancel request on its way to a server, which it marks for good
/// (`CancelKey::cancelling`).
pub struct Cancelling(std::sync::Arc<CancelKey>);

impl Cancelling {
    pub fn new(key: std::sync::Arc<CancelKey>) -> Cancelling {
        key.cancelled.store(true, Ordering::Release);
        Cancelling(key)
    }

    pub fn key(&self) -> &std::sync::Arc<CancelKey> {
        &self.0
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
pub struct ServerConn {
    pub id: u64,
    pub stream: crate::stream::Stream,
    /// Bytes read from the server and not yet handled; empty whenever the server is idle.
    pub buf: BytesMut,
    pub cancel_key: std::sync::Arc<CancelKey>,
    /// Session parameters as the server reported them, plus those the pooler set itself.
    pub params: HashMap<String, String>,
    /// The settings its session carries beyond the server's defaults: set by a client or by
    /// the pooler since login, as far as the pooler has seen.
    pub session: settings::Settings,
    /// Permits held against max_db_connections / max_user_connections; dropped with the
    /// connection.
    pub permits: Vec<tokio::sync::OwnedSemaphorePermit>,
    /// The pooler's named statements this server has prepared.
    pub prepared: prepared::PreparedCache,
    pub created: Instant,
    pub last_used: Instant,
    /// Which handing out to a client was its last (`Pool::checkout_for` numbers them all, in
    /// every pool, from 1); 0 if none yet. With server_lifetime 0 it is spent once handed out.
    pub stamp: u64,
    /// The pool's generation when this connection was opened; see `Pool::reconfigure`.
    pub generation: u64,
    /// Its entry in its pool's list of servers, removed when the connection goes.
    pub listed: Option<Listed>,
    /// The server sent an error nobody asked for (the FATAL of a shutdown, of
    /// pg_terminate_backend or of idle_session_timeout): it is closing, and is not reused.
    pub ending: bool,
}

/// What SHOW SERVERS tells of a server connection.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub id: u64,
    pub addr: String,
    pub port: u16,
    pub local_addr: String,
    pub local_port: u16,
    /// Its process id and secret, and whether a cancel request was sent to it.
    pub cancel_key: std::sync::Arc<CancelKey>,
    /// Unix time of the connection, in microseconds.
    pub connected_at: u64,
}

pub type ServerList = std::sync::Arc<std::sync::Mutex<HashMap<u64, ServerInfo>>>;

/// A server's place in a `ServerList`, given up on drop.
#[derive(Debug)]
pub struct Listed {
    list: std::sync::Weak<std::sync::Mutex<HashMap<u64, ServerInfo>>>,
    id: u64,
}

impl Listed {
    pub fn new(list: &ServerList, info: ServerInfo) -> Listed {
        let id = info.id;
        list.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, info);
        Listed {
            list: std::sync::Arc::downgrade(list),
            id,
        }
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        if let Some(list) = self.list.upgrade() {
            list.lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.id);
        }
    }
}

impl ServerConn {
    /// Boxed: a connection moves between the pool and its clients at every checkout, and
    /// moving a pointer costs less than moving the connection.
    pub async fn connect(
        target: &Target,
        timeout: Duration,
    ) -> Result<Box<ServerConn>, LoginError> {
        let conn = tokio::time::timeout(timeout, login::connect(target))
            .await
            .map_err(|_| LoginError::Timeout)??;
        tracing::info!(
            server = conn.id,
            addr = %target.addr(),
            db = %target.dbname,
            user = %target.credentials.user,
            "server connected"
        );
        Ok(conn)
    }

    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.created)
    }

    pub fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_used)
    }

    /// Whether the server closed this idle connection, or sent something on it unasked (the
    /// FATAL of pg_terminate_backend, idle_session_timeout or a shutdown): then no client
    /// may have it. Costs no system call unless the socket has shown activity since its last
    /// read.
    pub fn closed_while_idle(&self) -> bool {
        self.stream.stirred_while_idle()
    }

    /// Says goodbye politely, so the server logs no "unexpected EOF".
    pub async fn close(mut self: Box<Self>, why: &str) {
        let mut buf = BytesMut::new();
        crate::protocol::frontend::encode_terminate(&mut buf);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.write_all(&buf)).await;
        tracing::info!(server = self.id, reason = why, "server closed");
    }
}

/// Sends a CancelRequest on a connection of its own, as the protocol requires.
pub async fn cancel(key: &CancelKey) -> std::io::Result<()> {
    let packet = crate::protocol::startup::cancel_request(key.process_id, key.secret_key, false);
    key.delivering.fetch_add(1, Ordering::Relaxed);
    // Counted down also when the sending is dropped half-way.
    let _delivered = Delivered(&key.delivering);
    send_cancel(&key.addr, &packet).await
}

struct Delivered<'a>(&'a std::sync::atomic::AtomicU32);

impl Drop for Delivered<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sends a cancel request packet to `addr` (host:port, or a Unix socket's path) and waits (5 s
/// at most each) for the connection to be closed by the other end, which then has acted on it.
pub async fn send_cancel(addr: &str, packet: &[u8]) -> std::io::Result<()> {
    let mut stream =
        tokio::time::timeout(Duration::from_secs(5), crate::stream::connect(addr)).await??;
    stream.write_all(packet).await?;
    // The server closes the connection once it has read the request.
    let mut sink = [0u8; 1];
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut stream, &mut sink),
    )
    .await;
    Ok(())
}

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}
