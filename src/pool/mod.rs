//! Server connections per (database, user): checkout with a bounded FIFO wait queue, pool and
//! reserve sizes, lifetime and idle reaping, min_pool_size kept warm, and a pause on new
//! connects after a failed login.
//!
//! One mutex per pool guards the idle list and the queue; it is held for a few pointer moves,
//! never across IO. A waiter is a oneshot channel: a released connection goes straight to the
//! oldest waiter, and a freed slot becomes a permission to connect.

mod limits;
mod registry;

pub use limits::{Limit, Limits};
pub use registry::{ClientCounts, ClientState, InState, Members, Pools};

use crate::config::{Config, PoolSettings};
use crate::server::{Listed, ServerConn, ServerInfo, ServerList, Target};
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

enum Grant {
    Server(Box<ServerConn>),
    /// A slot was freed and counted for the receiver: it opens the connection itself.
    Connect,
    Failed(PoolError),
}

#[derive(Debug, Clone, PartialEq)]
struct Timeouts {
    query_wait: Option<Duration>,
    reserve_after: Duration,
    reserve_size: usize,
    connect: Duration,
    login_retry: Duration,
    idle: Option<Duration>,
    lifetime: Option<Duration>,
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
            lifetime: g.server_lifetime.enabled(),
            check: (!g.server_check_query.is_empty())
                .then(|| (g.server_check_delay.0, g.server_check_query.clone())),
        }
    }
}

struct Inner {
    idle: Vec<ServerConn>,
    /// Connections that exist or are being opened: idle + checked out + connecting.
    total: usize,
    waiters: VecDeque<(Instant, oneshot::Sender<Grant>)>,
    last_failure: Option<(Instant, Arc<str>)>,
    /// Connections being opened and logged in (counted in `total`).
    opening: usize,
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

/// A place in the wait queue. Dropped before its grant was taken (the client gave up, or its
/// future was cancelled), it hands back whatever grant raced in, so no connection or slot is
/// lost.
struct Ticket<'a> {
    pool: &'a Pool,
    rx: oneshot::Receiver<Grant>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.rx.close();
        if let Ok(grant) = self.rx.try_recv() {
            self.pool.return_grant(grant);
        }
    }
}

/// A slot counted in `total` for a connection being opened; given back if the opening fails
/// or is abandoned.
struct Opening<'a> {
    pool: &'a Pool,
    armed: bool,
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.pool.give_back_slot();
        }
    }
}

/// ParameterStatus name/value pairs as a server reported them at login.
pub type ServerParams = Arc<Vec<(String, String)>>;

/// A connection and how long the client waited for it.
pub struct Checkout {
    pub conn: ServerConn,
    pub waited: Duration,
}

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

    fn expired(&self, conn: &ServerConn, now: Instant) -> bool {
        self.setup()
            .timeouts
            .lifetime
            .is_some_and(|l| conn.age(now) >= l)
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

    /// Takes a server connection, waiting in line (FIFO) when the pool is at its size. One
    /// that has been idle longer than server_check_delay must first answer
    /// server_check_query; one that does not is closed and another taken.
    pub async fn checkout(&self) -> Result<Checkout, PoolError> {
        let start = Instant::now();
        loop {
            let mut c = self.take(start).await?;
            if self.passes_check(&mut c.conn).await {
                self.metrics.wait.observe(c.waited.as_secs_f64());
                return Ok(c);
            }
            tracing::info!(db = %self.database, user = %self.user, node = %self.setup().target.addr(), server = c.conn.id, "server failed server_check_query");
            self.give_back_slot();
            tokio::spawn(c.conn.close("server_check_query failed"));
        }
    }

    /// True unless the connection has been idle past server_check_delay and then fails
    /// server_check_query.
    async fn passes_check(&self, conn: &mut ServerConn) -> bool {
        let setup = self.setup();
        let Some((delay, query)) = &setup.timeouts.check else {
            return true;
        };
        if conn.idle_for(Instant::now()) < *delay {
            return true;
        }
        let check = crate::server::query::simple(conn, query);
        matches!(
            tokio::time::timeout(setup.timeouts.connect, check).await,
            Ok(Ok(_))
        ) && conn.buf.is_empty()
    }

    async fn take(&self, start: Instant) -> Result<Checkout, PoolError> {
        let mut expired = Vec::new();
        let taken = {
            let mut inner = self.lock();
            let now = Instant::now();
            let mut found = None;
            while let Some(conn) = inner.idle.pop() {
                if self.expired(&conn, now) {
                    inner.total -= 1;
                    expired.push(conn);
                } else {
                    found = Some(conn);
                    break;
                }
            }
            match found {
                Some(conn) => Ok(conn),
                None if inner.total < self.setup().settings.pool_size => {
                    self.may_connect(&inner, now)?;
                    inner.total += 1;
                    Err(None)
                }
                None => {
                    let (tx, rx) = oneshot::channel();
                    inner.waiters.push_back((now, tx));
                    Err(Some(rx))
                }
            }
        };
        for conn in expired {
            tokio::spawn(conn.close("server_lifetime"));
        }
        let mut ticket = match taken {
            Ok(conn) => {
                return Ok(Checkout {
                    conn,
                    waited: Duration::ZERO,
                })
            }
            Err(None) => {
                let conn = self.open_counted().await?;
                return Ok(Checkout {
                    conn,
                    waited: start.elapsed(),
                });
            }
            Err(Some(rx)) => Ticket { pool: self, rx },
        };
        let rx = &mut ticket.rx;
        let deadline = self.setup().timeouts.query_wait.map(|t| start + t);
        let mut reserve_at = (self.setup().timeouts.reserve_size > 0)
            .then(|| start + self.setup().timeouts.reserve_after);
        let grant = loop {
            let wake = match (deadline, reserve_at) {
                (Some(d), Some(r)) => Some(d.min(r)),
                (d, r) => d.or(r),
            };
            let received = match wake {
                Some(at) => tokio::time::timeout_at(at.into(), &mut *rx).await.ok(),
                None => Some((&mut *rx).await),
            };
            match received {
                Some(Ok(grant)) => break grant,
                // The sender was dropped without a grant: only when the pool itself is gone.
                Some(Err(_)) => return Err(PoolError::WaitTimeout),
                None => {}
            }
            let now = Instant::now();
            if reserve_at.is_some_and(|r| now >= r) && deadline.is_none_or(|d| now < d) {
                // One try at the reserve; afterwards only a grant or the deadline wakes us.
                reserve_at = None;
                if self.take_reserve_slot(now) {
                    rx.close();
                    if let Ok(grant) = rx.try_recv() {
                        // A grant raced with us: take it and give the reserve slot back.
                        self.give_back_slot();
                        break grant;
                    }
                    tracing::debug!(db = %self.database, user = %self.user, node = %self.setup().target.addr(), "using reserve pool");
                    let conn = self.open_counted().await?;
                    return Ok(Checkout {
                        conn,
                        waited: start.elapsed(),
                    });
                }
            }
            if deadline.is_some_and(|d| now >= d) {
                rx.close();
                match rx.try_recv() {
                    Ok(grant) => break grant,
                    Err(_) => return Err(PoolError::WaitTimeout),
                }
            }
        };
        let waited = start.elapsed();
        match grant {
            Grant::Server(conn) => Ok(Checkout {
                conn: *conn,
                waited,
            }),
            Grant::Connect => Ok(Checkout {
                conn: self.open_counted().await?,
                waited,
            }),
            Grant::Failed(e) => Err(e),
        }
    }

    /// A grant that reached a waiter who no longer wants it goes back to the pool.
    fn return_grant(&self, grant: Grant) {
        match grant {
            Grant::Server(conn) => self.release(*conn, true),
            Grant::Connect => self.give_back_slot(),
            Grant::Failed(_) => {}
        }
    }

    fn take_reserve_slot(&self, now: Instant) -> bool {
        let mut inner = self.lock();
        let room =
            inner.total < self.setup().settings.pool_size + self.setup().timeouts.reserve_size;
        if room && self.may_connect(&inner, now).is_ok() {
            inner.total += 1;
            return true;
        }
        false
    }

    /// A counted slot goes unused: uncount it, and let a waiter have it.
    fn give_back_slot(&self) {
        let mut inner = self.lock();
        inner.total -= 1;
        self.slot_freed(inner);
    }

    fn may_connect(&self, inner: &Inner, now: Instant) -> Result<(), PoolError> {
        match &inner.last_failure {
            Some((at, why)) if now.duration_since(*at) < self.setup().timeouts.login_retry => {
                Err(PoolError::LoginFailing {
                    detail: why.clone(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Opens a connection whose slot has already been counted in `total`, once the database
    /// and user limits allow one more.
    async fn open_counted(&self) -> Result<ServerConn, PoolError> {
        let opening = Opening {
            pool: self,
            armed: true,
        };
        let permits = match self.setup().timeouts.query_wait {
            Some(t) => tokio::time::timeout(t, self.limits.acquire(self))
                .await
                .map_err(|_| PoolError::WaitTimeout)?,
            None => self.limits.acquire(self).await,
        };
        self.connect_counted(opening, permits).await
    }

    /// Opens a connection whose slot is counted (`opening`) and whose permits are in hand.
    async fn connect_counted(
        &self,
        mut opening: Opening<'_>,
        permits: Vec<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<ServerConn, PoolError> {
        self.lock().opening += 1;
        let setup = self.setup.load_full();
        let connected = ServerConn::connect(&setup.target, setup.timeouts.connect).await;
        self.lock().opening -= 1;
        match connected {
            Ok(mut conn) => {
                conn.generation = setup.generation;
                let info = ServerInfo {
                    id: conn.id,
                    addr: setup.target.host.clone(),
                    port: setup.target.port,
                    local_addr: conn
                        .stream
                        .tcp()
                        .and_then(|t| t.local_addr().ok())
                        .map_or(String::new(), |a| a.ip().to_string()),
                    local_port: conn
                        .stream
                        .tcp()
                        .and_then(|t| t.local_addr().ok())
                        .map_or(0, |a| a.port()),
                    remote_pid: conn.cancel_key.process_id,
                    connected_at: crate::stats::unix_micros(),
                };
                conn.listed = Some(Listed::new(&self.servers, info));
                self.metrics.server_connects.inc();
                opening.armed = false;
                conn.permits = permits;
                self.lock().last_failure = None;
                self.learn_params(&conn);
                Ok(conn)
            }
            Err(e) => {
                self.metrics.server_connect_errors.inc();
                let why: Arc<str> = e.to_string().into();
                tracing::warn!(db = %self.database, user = %self.user, node = %self.setup().target.addr(), error = %why, "server login failed");
                let mut inner = self.lock();
                inner.last_failure = Some((Instant::now(), why.clone()));
                if inner.total == 1 {
                    // This was the only connection, and none can come back to the waiters:
                    // tell them now instead of letting them run into query_wait_timeout.
                    for (_, w) in inner.waiters.drain(..) {
                        let _ = w.send(Grant::Failed(PoolError::LoginFailing {
                            detail: why.clone(),
                        }));
                    }
                }
                Err(PoolError::Connect(why))
            }
        }
    }

    /// Gives a connection back. `reusable` is false when its state is in doubt: then it is
    /// closed, and a waiter gets the freed slot.
    pub fn release(&self, mut conn: ServerConn, reusable: bool) {
        let now = Instant::now();
        let setup = self.setup();
        let mut inner = self.lock();
        let why = if !reusable {
            Some("state unknown after client left")
        } else if self.expired(&conn, now) {
            Some("server_lifetime")
        } else if conn.generation != setup.generation {
            Some("server settings changed by a reload")
        } else if inner.total > setup.settings.pool_size + setup.timeouts.reserve_size {
            Some("pool_size lowered by a reload")
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
            match w.send(Grant::Server(Box::new(conn))) {
                Ok(()) => return,
                Err(Grant::Server(c)) => conn = *c,
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

    /// Applies a reloaded configuration. A changed target (host, port, database name or
    /// login) starts a new generation: older servers are closed now if idle, else when
    /// released. A smaller pool shrinks as servers come back; a larger one lets waiters in.
    pub fn reconfigure(&self, config: &Config, settings: PoolSettings, target: Target) {
        let old = self.setup.load_full();
        let generation = old.generation + u64::from(old.target != target);
        let new = Setup {
            settings,
            target,
            timeouts: Timeouts::from(config),
            generation,
        };
        if *old == new {
            return;
        }
        let size = new.settings.pool_size;
        self.setup.store(Arc::new(new));
        self.close_idle("server settings changed by a reload", |idle, total| {
            let (mut stale, mut keep): (Vec<_>, Vec<_>) =
                idle.drain(..).partition(|c| c.generation != generation);
            while total - stale.len() > size {
                match keep.pop() {
                    Some(conn) => stale.push(conn),
                    None => break,
                }
            }
            *idle = keep;
            stale
        });
        tracing::info!(db = %self.database, user = %self.user, node = self.node, generation, "pool reconfigured");
    }

    /// Closes idle connections past server_idle_timeout or server_lifetime (keeping
    /// min_pool_size), then opens connections up to min_pool_size. Run on a timer.
    pub async fn maintain(&self) {
        let now = Instant::now();
        let mut closing = Vec::new();
        {
            let mut inner = self.lock();
            let mut keep = Vec::with_capacity(inner.idle.len());
            let mut total = inner.total;
            for conn in inner.idle.drain(..) {
                let idle_out = self
                    .setup()
                    .timeouts
                    .idle
                    .is_some_and(|t| conn.idle_for(now) >= t)
                    && total > self.setup().settings.min_pool_size;
                if idle_out || self.expired(&conn, now) {
                    total -= 1;
                    closing.push((
                        conn,
                        if idle_out {
                            "server_idle_timeout"
                        } else {
                            "server_lifetime"
                        },
                    ));
                } else {
                    keep.push(conn);
                }
            }
            inner.idle = keep;
            inner.total = total;
        }
        for (conn, why) in closing {
            conn.close(why).await;
        }
        loop {
            let permits = {
                let mut inner = self.lock();
                let want = self
                    .setup()
                    .settings
                    .min_pool_size
                    .min(self.setup().settings.pool_size);
                if inner.total >= want || self.may_connect(&inner, Instant::now()).is_err() {
                    return;
                }
                // Warming never waits for, or takes, room that clients of other pools need.
                if self.limits.contended() {
                    return;
                }
                let Some(permits) = self.limits.try_acquire() else {
                    return;
                };
                inner.total += 1;
                permits
            };
            let opening = Opening {
                pool: self,
                armed: true,
            };
            match self.connect_counted(opening, permits).await {
                Ok(conn) => self.release(conn, true),
                Err(_) => return,
            }
        }
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

    /// Closes every server when it is next idle (RECONNECT), by starting a new generation.
    pub fn reconnect(&self) {
        let mut setup = (**self.setup.load()).clone();
        setup.generation += 1;
        let generation = setup.generation;
        self.setup.store(Arc::new(setup));
        self.close_idle("RECONNECT", |idle, _| std::mem::take(idle));
        tracing::info!(db = %self.database, user = %self.user, node = self.node, generation, "servers will reconnect");
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
        PoolStats {
            active: inner.total - inner.idle.len() - inner.opening,
            idle: inner.idle.len() - used,
            used,
            login: inner.opening,
            waiting: inner.waiters.len(),
            max_wait: inner
                .waiters
                .front()
                .map_or(Duration::ZERO, |(at, _)| now.saturating_duration_since(*at)),
        }
    }

    /// Closes every idle connection, and forgets a failed login so that the next client may
    /// try at once: the node has just been banned or has just come back.
    pub fn drain_idle(&self, why: &'static str) {
        self.lock().last_failure = None;
        self.close_idle(why, |idle, _| std::mem::take(idle));
    }

    /// Closes the idle connections `pick` takes out of the idle list (given it and the
    /// pool's total), and lets waiters have the room.
    fn close_idle(
        &self,
        why: &'static str,
        pick: impl FnOnce(&mut Vec<ServerConn>, usize) -> Vec<ServerConn>,
    ) {
        let stale = {
            let mut inner = self.lock();
            let total = inner.total;
            let stale = pick(&mut inner.idle, total);
            inner.total -= stale.len();
            self.slot_freed(inner);
            stale
        };
        for conn in stale {
            tokio::spawn(conn.close(why));
        }
    }

    /// Takes one idle connection out of the pool, for closing.
    fn take_idle(&self) -> Option<ServerConn> {
        let mut inner = self.lock();
        let conn = inner.idle.pop()?;
        inner.total -= 1;
        self.slot_freed(inner);
        Some(conn)
    }
}
