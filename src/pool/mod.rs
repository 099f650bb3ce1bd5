//! Server connections per (database, user): checkout with a bounded FIFO wait queue, pool and
//! reserve sizes, lifetime and idle reaping, min_pool_size kept warm, and a pause on new
//! connects after a failed login.
//!
//! One mutex per pool guards the idle list and the queue; it is held for a few pointer moves,
//! never across IO. A waiter is a oneshot channel: a released connection goes straight to the
//! oldest waiter, and a freed slot becomes a permission to connect.

mod checkout;
mod clients;
mod limits;
pub mod listener;
pub mod lookup;
mod maintain;
mod registry;

pub use checkout::Checkout;
use checkout::Grant;
pub use clients::{ClientLimits, Full};
pub use limits::{Limit, Limits};
pub use registry::{ClientCounts, ClientState, InState, Members, Pools};

use crate::config::{Config, PoolSettings};
use crate::server::{ServerConn, ServerInfo, ServerList, Target};
use crate::stats::PoolMetrics;
use arc_swap::ArcSwap;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Why no server connection could be had. Each maps to PgBouncer's error text.
#[derive(Debug, thiserror::Error, Clone)]
pub enum PoolError {
    #[error("query_wait_timeout")]
    WaitTimeout,
    #[error("server login has been failing, try again later (server_login_retry)")]
    LoginFailing { detail: Arc<str> },
    #[error("server connection failed: {0}")]
    Connect(Arc<str>),
}

#[derive(Debug, Clone, PartialEq)]
struct Timeouts {
    query_wait: Option<Duration>,
    reserve_after: Duration,
    reserve_size: usize,
    connect: Duration,
    login_retry: Duration,
    idle: Option<Duration>,
    /// server_lifetime; zero: each connection serves one client (PgBouncer's "used only
    /// once").
    lifetime: Duration,
    /// server_check_delay and server_check_query, unless the query is empty.
    check: Option<(Duration, String)>,
}

impl Timeouts {
    fn from(config: &Config) -> Timeouts {
        let g = &config.general;
        Timeouts {
            query_wait: g.query_wait_timeout.enabled(),
            reserve_after: g.reserve_pool_timeout.0,
            reserve_size: g.reserve_pool_size,
            connect: g.server_connect_timeout.0,
            login_retry: g.server_login_retry.0,
            idle: g.server_idle_timeout.enabled(),
            lifetime: g.server_lifetime.0,
            check: (!g.server_check_query.is_empty())
                .then(|| (g.server_check_delay.0, g.server_check_query.clone())),
        }
    }
}

struct Inner {
    /// Boxed: a connection moves out and back at every checkout, and a pointer is cheaper
    /// to move than the connection.
    #[allow(clippy::vec_box)]
    idle: Vec<Box<ServerConn>>,
    /// Connections that exist or are being opened: idle + checked out + connecting.
    total: usize,
    waiters: VecDeque<(Instant, oneshot::Sender<Grant>)>,
    last_failure: Option<LoginFailure>,
    /// Connections being opened and logged in (counted in `total`).
    opening: usize,
    /// When a client last found no idle connection: a failed login is tried again in the
    /// background only while clients still want one.
    wanted: Option<Instant>,
    /// Whether the task that ends waits at query_wait_timeout and hands out the reserve
    /// (`checkout::keep_line`) runs.
    keeper: bool,
}

/// Server logins that failed in a row, the last one's time and error.
#[derive(Debug, Clone)]
pub(super) struct LoginFailure {
    pub(super) at: Instant,
    pub(super) why: Arc<str>,
    pub(super) in_a_row: u32,
}

/// The first wait before a server login is tried again after a failure; it doubles with each
/// failure in a row, up to server_login_retry.
const FIRST_LOGIN_RETRY: Duration = Duration::from_millis(100);

impl LoginFailure {
    /// How long after this failure the next login may be tried.
    pub(super) fn window(&self, login_retry: Duration) -> Duration {
        let factor = 1u32 << self.in_a_row.saturating_sub(1).min(16);
        FIRST_LOGIN_RETRY.saturating_mul(factor).min(login_retry)
    }

    /// The failures have gone on long enough for the wait to reach server_login_retry: the
    /// server is taken to be down, and clients are told at once instead of waiting.
    pub(super) fn known_down(&self, login_retry: Duration) -> bool {
        self.window(login_retry) >= login_retry
    }
}

/// A pool's connections by state, as SHOW POOLS and the metrics report them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Checked out by clients.
    pub active: usize,
    /// Idle, ready for a client.
    pub idle: usize,
    /// Idle past server_check_delay: checked before a client gets them.
    pub used: usize,
    /// Being opened.
    pub login: usize,
    /// Clients waiting in line for a connection.
    pub waiting: usize,
    /// How long the longest waiting client has waited.
    pub max_wait: Duration,
}

impl PoolStats {
    /// Server connections open or opening, whatever their state.
    pub fn open(&self) -> usize {
        self.active + self.idle + self.used + self.login
    }
}

/// What a reload may change about a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Setup {
    pub settings: PoolSettings,
    pub target: Target,
    timeouts: Timeouts,
    /// Bumped when the target changes: servers of an older generation are closed when next
    /// idle.
    generation: u64,
}

pub struct Pool {
    pub database: String,
    pub user: String,
    /// Index of the pool's node in its database's cluster (0 = the primary).
    pub node: usize,
    setup: ArcSwap<Setup>,
    limits: Limits,
    inner: Mutex<Inner>,
    /// ParameterStatus values of this pool's servers, learned from the first connection and
    /// shown to each client at login.
    server_params: Mutex<Option<ServerParams>>,
    /// Set while `maintain` runs for this pool.
    pub(crate) maintaining: std::sync::atomic::AtomicBool,
    pub metrics: PoolMetrics,
    /// Every open server connection of the pool, for SHOW SERVERS.
    servers: ServerList,
}

/// ParameterStatus name/value pairs as a server reported them at login.
pub type ServerParams = Arc<Vec<(String, String)>>;

impl Pool {
    /// A pool for clients of `database` logged in as `user`, with servers on node `node`.
    pub fn new(
        (database, user, node): (&str, &str, usize),
        settings: PoolSettings,
        target: Target,
        limits: Limits,
        config: &Config,
        metrics: PoolMetrics,
    ) -> Pool {
        Pool {
            database: database.to_owned(),
            user: user.to_owned(),
            node,
            setup: ArcSwap::from_pointee(Setup {
                settings,
                target,
                timeouts: Timeouts::from(config),
                generation: 0,
            }),
            limits,
            inner: Mutex::new(Inner {
                idle: Vec::new(),
                total: 0,
                waiters: VecDeque::new(),
                last_failure: None,
                opening: 0,
                wanted: None,
                keeper: false,
            }),
            server_params: Mutex::new(None),
            maintaining: Default::default(),
            metrics,
            servers: ServerList::default(),
        }
    }

    /// The pool's current settings, target and timeouts.
    pub fn setup(&self) -> arc_swap::Guard<Arc<Setup>> {
        self.setup.load()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave it half-updated in a way worse than
        // a lost connection count, so recover instead of poisoning every later client.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether each connection serves one client and is then closed (server_lifetime 0): a
    /// reset before giving it back would be wasted.
    pub fn serves_once(&self) -> bool {
        self.setup().timeouts.lifetime.is_zero()
    }

    /// Whether `conn` is past server_lifetime (`setup`'s): older than it, or, when it is 0,
    /// handed to a client once already.
    fn expired(setup: &Setup, conn: &ServerConn, now: Instant) -> bool {
        match setup.timeouts.lifetime {
            l if l.is_zero() => conn.stamp != 0,
            l => conn.age(now) >= l,
        }
    }

    pub fn server_params(&self) -> Option<ServerParams> {
        self.server_params
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn learn_params(&self, conn: &ServerConn) {
        let mut cached = self.server_params.lock().unwrap_or_else(|e| e.into_inner());
        if cached.is_none() {
            let mut params: Vec<_> = conn
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            params.sort();
            *cached = Some(Arc::new(params));
        }
    }

    /// Gives a connection back. `reusable` is false when its state is in doubt: then it is
    /// closed, and a waiter gets the freed slot.
    pub fn release(&self, conn: Box<ServerConn>, reusable: bool) {
        self.release_at(conn, reusable, Instant::now())
    }

    /// `release` as of `now`, a time the caller already read.
    pub fn release_at(&self, mut conn: Box<ServerConn>, reusable: bool, now: Instant) {
        let setup = self.setup();
        let mut inner = self.lock();
        let why = if !reusable {
            Some("state unknown after client left")
        } else if Pool::expired(&setup, &conn, now) {
            Some("server_lifetime")
        } else if conn.generation != setup.generation {
            Some("server settings changed by a reload")
        } else if inner.total > setup.settings.pool_size + setup.timeouts.reserve_size {
            Some("pool_size lowered by a reload")
        } else if conn.cancel_key.cancelling() {
            Some("a client's cancel request was sent to it")
        } else {
            None
        };
        if let Some(why) = why {
            inner.total -= 1;
            self.slot_freed(inner);
            tokio::spawn(conn.close(why));
            return;
        }
        conn.last_used = now;
        while let Some((_, w)) = inner.waiters.pop_front() {
            match w.send(Grant::Server(conn)) {
                Ok(()) => return,
                Err(Grant::Server(c)) => conn = c,
                Err(_) => unreachable!("send returns what it was given"),
            }
        }
        if self.limits.contended() {
            // Another pool of this database or user waits for a permit this one holds.
            inner.total -= 1;
            drop(inner);
            tokio::spawn(
                conn.close("max_db_connections/max_user_connections: room for another pool"),
            );
            return;
        }
        inner.idle.push(conn);
    }

    /// Slots below pool_size became free: the oldest live waiters may connect.
    fn slot_freed(&self, mut inner: MutexGuard<'_, Inner>) {
        let size = self.setup().settings.pool_size;
        if self.may_connect(&inner, Instant::now()).is_err() {
            return;
        }
        while inner.total < size {
            let Some((_, w)) = inner.waiters.pop_front() else {
                return;
            };
            inner.total += 1;
            if w.send(Grant::Connect).is_err() {
                inner.total -= 1;
            }
        }
    }

    /// Its servers a client's cancel request was sent to (closed, not pooled, once their
    /// client lets them go), and the cancel requests on their way to its servers now.
    pub fn cancels(&self) -> (usize, usize) {
        let list = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        list.values().fold((0, 0), |(marked, delivering), i| {
            let key = &i.cancel_key;
            let on_way = key.delivering() as usize;
            (marked + usize::from(key.cancelling()), delivering + on_way)
        })
    }

    /// Every server connection, and whether it is idle in the pool.
    pub fn servers(&self) -> Vec<(ServerInfo, bool)> {
        let idle: Vec<u64> = self.lock().idle.iter().map(|c| c.id).collect();
        let list = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = list
            .values()
            .map(|i| (i.clone(), idle.contains(&i.id)))
            .collect();
        all.sort_by_key(|(i, _)| i.id);
        all
    }

    pub fn stats(&self) -> PoolStats {
        let now = Instant::now();
        let inner = self.lock();
        let used = match &self.setup().timeouts.check {
            Some((delay, _)) => inner
                .idle
                .iter()
                .filter(|c| c.idle_for(now) >= *delay)
                .count(),
            None => 0,
        };
        // A client that gave up its place leaves its sender in the queue until a release
        // passes it over: it is not waiting any more.
        let mut waiting = inner.waiters.iter().filter(|(_, tx)| !tx.is_closed());
        let oldest = waiting.next();
        PoolStats {
            active: inner.total - inner.idle.len() - inner.opening,
            idle: inner.idle.len() - used,
            used,
            login: inner.opening,
            waiting: oldest.map_or(0, |_| 1 + waiting.count()),
            max_wait: oldest.map_or(Duration::ZERO, |(at, _)| now.saturating_duration_since(*at)),
        }
    }
}

#[cfg(test)]
mod tests;
