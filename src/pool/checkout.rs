//! Checking a server out of a pool: an idle connection (checked first if it has been idle
//! past server_check_delay), else a slot to open one, else a place in the FIFO wait queue,
//! with the reserve after reserve_pool_timeout and an end at query_wait_timeout, both kept by
//! one task per pool while clients wait (`keep_line`).

use super::{Inner, Pool, PoolError};
use crate::server::{Listed, ServerConn, ServerInfo};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The last stamp given to a server connection handed out (`ServerConn::stamp`).
static STAMPS: AtomicU64 = AtomicU64::new(0);

pub(super) enum Grant {
    Server(Box<ServerConn>),
    /// A slot was freed and counted for the receiver: it opens the connection itself.
    Connect,
    Failed(PoolError),
}

/// A place in the wait queue. Dropped before its grant was taken (the client gave up, or its
/// future was cancelled), it hands back whatever grant raced in, so no connection or slot is
/// lost.
struct Ticket<'a> {
    pool: &'a Pool,
    rx: oneshot::Receiver<Grant>,
}

impl Ticket<'_> {
    /// Waits for the grant; no timer of its own (`keep_line` ends the wait in time).
    async fn wait(&mut self) -> Grant {
        // The sender is dropped without a grant only when the pool itself goes.
        (&mut self.rx)
            .await
            .unwrap_or(Grant::Failed(PoolError::WaitTimeout))
    }
}

/// One pool's line keeper, while clients wait in its line: one timer for the whole line
/// rather than one per waiting client.
async fn keep_line(pool: Weak<Pool>) {
    loop {
        let next = match pool.upgrade() {
            Some(pool) => pool.tend_line(Instant::now()),
            None => return,
        };
        let Some(next) = next else { return };
        tokio::time::sleep_until(next.into()).await;
    }
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
/// or is abandoned (its future dropped: the client left, or a timeout passed).
pub(super) struct Opening<'a> {
    pub(super) pool: &'a Pool,
    pub(super) armed: bool,
    /// Counted in `opening` while its login is on the way.
    logging_in: bool,
}

impl<'a> Opening<'a> {
    pub(super) fn new(pool: &'a Pool) -> Opening<'a> {
        Opening {
            pool,
            armed: true,
            logging_in: false,
        }
    }

    fn logging_in(&mut self, on: bool) {
        let mut inner = self.pool.lock();
        if on {
            inner.opening += 1;
        } else {
            inner.opening -= 1;
        }
        self.logging_in = on;
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        if self.logging_in {
            self.logging_in(false);
        }
        if self.armed {
            self.pool.give_back_slot();
        }
    }
}

/// A connection and how long the client waited for it.
pub struct Checkout {
    pub conn: Box<ServerConn>,
    pub waited: Duration,
    /// The connection's stamp before this checkout: the client that got it then is the last
    /// that used it (0: none).
    pub previous: u64,
}

/// What the pool has for a client at once.
enum Taken {
    Idle(Box<ServerConn>),
    /// A slot is counted for the client: it opens the connection itself.
    Connect,
    /// The pool is full: a place in line.
    Wait(oneshot::Receiver<Grant>),
}

/// How many of the most recently used idle servers a checkout looks through for one that
/// already has the client's settings.
const AFFINITY_DEPTH: usize = 8;

impl Pool {
    /// Takes a server connection, waiting in line (FIFO) when the pool is at its size. One
    /// that has been idle longer than server_check_delay must first answer
    /// server_check_query; one that does not is closed and another taken.
    pub async fn checkout(self: &Arc<Self>) -> Result<Checkout, PoolError> {
        self.checkout_for(None, Instant::now()).await
    }

    /// As `checkout`, preferring among the most recently used idle servers one whose session
    /// settings have the fingerprint `settings`: it needs nothing applied before the client's
    /// work runs. `start` is now, as the caller read it.
    pub async fn checkout_for(
        self: &Arc<Self>,
        settings: Option<u64>,
        start: Instant,
    ) -> Result<Checkout, PoolError> {
        loop {
            let mut c = self.take(start, settings).await?;
            if self.passes_check(&mut c.conn, start).await {
                self.metrics.wait.observe(c.waited.as_secs_f64());
                c.previous = c.conn.stamp;
                c.conn.stamp = STAMPS.fetch_add(1, Ordering::Relaxed) + 1;
                return Ok(c);
            }
            tracing::info!(db = %self.database, user = %self.user, node = %self.setup().target.addr(), server = c.conn.id, "server failed server_check_query");
            self.give_back_slot();
            tokio::spawn(c.conn.close("server_check_query failed"));
        }
    }

    /// True unless the connection has been idle past server_check_delay and then fails
    /// server_check_query.
    async fn passes_check(&self, conn: &mut ServerConn, now: Instant) -> bool {
        let setup = self.setup();
        let Some((delay, query)) = &setup.timeouts.check else {
            return true;
        };
        if conn.idle_for(now) < *delay {
            return true;
        }
        // Boxed: seldom due, and its space would be in every unit of work.
        let check = Box::pin(crate::server::query::simple(conn, query));
        matches!(
            tokio::time::timeout(setup.timeouts.connect, check).await,
            Ok(Ok(_))
        ) && conn.buf.is_empty()
    }

    /// Whether a client whose server login failed, waiting since `since`, may try again: the
    /// next try waits a little (doubling with each failure in a row, from 100 ms), so a server
    /// restart of a second costs clients nothing. Not once the server is known to be down
    /// (the wait has grown to server_login_retry), nor past query_wait_timeout.
    pub fn login_recovering(&self, since: Instant) -> bool {
        let setup = self.setup();
        let retry = setup.timeouts.login_retry;
        let down = self
            .lock()
            .last_failure
            .as_ref()
            .is_some_and(|f| f.known_down(retry));
        !down
            && setup
                .timeouts
                .query_wait
                .is_none_or(|t| since.elapsed() < t)
    }

    /// Takes an idle connection, or a slot to open one, or a place in the wait queue.
    async fn take(
        self: &Arc<Self>,
        start: Instant,
        settings: Option<u64>,
    ) -> Result<Checkout, PoolError> {
        let mut ticket = match self.take_now(settings, start)? {
            Taken::Idle(conn) => {
                return Ok(Checkout {
                    conn,
                    waited: Duration::ZERO,
                    previous: 0,
                })
            }
            // Boxed, here and below: a login is rare and its future large, and every
            // client's unit of work would carry its space in place.
            Taken::Connect => {
                let conn = Box::pin(self.open_counted(start)).await?;
                return Ok(Checkout {
                    conn,
                    waited: start.elapsed(),
                    previous: 0,
                });
            }
            Taken::Wait(rx) => Ticket { pool: self, rx },
        };
        let conn = match ticket.wait().await {
            Grant::Server(conn) => conn,
            Grant::Connect => Box::pin(self.open_counted(start)).await?,
            Grant::Failed(e) => return Err(e),
        };
        Ok(Checkout {
            conn,
            waited: start.elapsed(),
            previous: 0,
        })
    }

    /// What the pool has for a client right now. Expired idle connections met on the way
    /// are closed.
    fn take_now(self: &Arc<Self>, settings: Option<u64>, now: Instant) -> Result<Taken, PoolError> {
        let mut expired = Vec::new();
        let taken = {
            let setup = self.setup();
            let mut inner = self.lock();
            if let Some(fp) = settings {
                // The most recent is the likeliest to be warm: look a little further only
                // when it does not match.
                let idle = &mut inner.idle;
                let n = idle.len();
                let matching = (n.saturating_sub(AFFINITY_DEPTH)..n)
                    .rev()
                    .find(|&i| idle[i].session.fingerprint() == fp);
                if let Some(i) = matching.filter(|&i| i + 1 < n) {
                    idle.swap(i, n - 1);
                }
            }
            let mut found = None;
            while let Some(conn) = inner.idle.pop() {
                if Pool::expired(&setup, &conn, now) {
                    inner.total -= 1;
                    expired.push((conn, "server_lifetime"));
                } else if conn.closed_while_idle() {
                    inner.total -= 1;
                    expired.push((conn, "closed by the server while idle"));
                } else {
                    found = Some(conn);
                    break;
                }
            }
            if found.is_none() {
                inner.wanted = Some(now);
            }
            match found {
                Some(conn) => Taken::Idle(conn),
                None if inner.total < setup.settings.pool_size => {
                    self.may_connect(&inner, now)?;
                    inner.total += 1;
                    Taken::Connect
                }
                None => {
                    let (tx, rx) = oneshot::channel();
                    inner.waiters.push_back((now, tx));
                    let t = &setup.timeouts;
                    if !inner.keeper && (t.query_wait.is_some() || t.reserve_size > 0) {
                        inner.keeper = true;
                        tokio::spawn(keep_line(Arc::downgrade(self)));
                    }
                    Taken::Wait(rx)
                }
            }
        };
        for (conn, why) in expired {
            tokio::spawn(conn.close(why));
        }
        Ok(taken)
    }

    /// A grant that reached a waiter who no longer wants it goes back to the pool.
    pub(super) fn return_grant(&self, grant: Grant) {
        match grant {
            Grant::Server(conn) => self.release(conn, true),
            Grant::Connect => self.give_back_slot(),
            Grant::Failed(_) => {}
        }
    }

    /// Ends the waits in line that have passed query_wait_timeout and gives a reserve slot,
    /// while there is room, to those past reserve_pool_timeout, oldest first. When the next of
    /// these is due; none once no one waits (the keeper then ends).
    fn tend_line(&self, now: Instant) -> Option<Instant> {
        let setup = self.setup();
        let t = &setup.timeouts;
        let mut inner = self.lock();
        // The line is in order of arrival: the longest waits are at its front.
        if let Some(wait) = t.query_wait {
            while inner
                .waiters
                .front()
                .is_some_and(|(since, _)| now >= *since + wait)
            {
                if let Some((_, w)) = inner.waiters.pop_front() {
                    let _ = w.send(Grant::Failed(PoolError::WaitTimeout));
                }
            }
        }
        if t.reserve_size > 0 {
            while inner
                .waiters
                .front()
                .is_some_and(|(since, _)| now >= *since + t.reserve_after)
                && inner.total < setup.settings.pool_size + t.reserve_size
                && self.may_connect(&inner, now).is_ok()
            {
                let Some((_, w)) = inner.waiters.pop_front() else {
                    break;
                };
                inner.total += 1;
                if w.send(Grant::Connect).is_err() {
                    inner.total -= 1;
                } else {
                    tracing::debug!(db = %self.database, user = %self.user, node = %setup.target.addr(), "using reserve pool");
                }
            }
        }
        let Some((head, _)) = inner.waiters.front() else {
            inner.keeper = false;
            return None;
        };
        // Within a second at most: a reload may shorten the timeouts, and room in the
        // reserve may come.
        let mut next = now + Duration::from_secs(1);
        if let Some(wait) = t.query_wait {
            next = next.min(*head + wait);
        }
        if t.reserve_size > 0 && *head + t.reserve_after > now {
            next = next.min(*head + t.reserve_after);
        }
        Some(next)
    }

    /// A counted slot goes unused: uncount it, and let a waiter have it.
    pub(super) fn give_back_slot(&self) {
        let mut inner = self.lock();
        inner.total -= 1;
        self.slot_freed(inner);
    }

    /// Whether a login may be tried now or after a short wait (`login_wait`); not while the
    /// server is known to be down and server_login_retry has not passed since the last try.
    pub(super) fn may_connect(&self, inner: &Inner, now: Instant) -> Result<(), PoolError> {
        let retry = self.setup().timeouts.login_retry;
        match &inner.last_failure {
            Some(f) if f.known_down(retry) && now.duration_since(f.at) < retry => {
                Err(PoolError::LoginFailing {
                    detail: f.why.clone(),
                })
            }
            _ => Ok(()),
        }
    }

    /// How long until the next login may be tried after the failures so far.
    fn login_wait(&self, now: Instant) -> Duration {
        let retry = self.setup().timeouts.login_retry;
        self.lock()
            .last_failure
            .as_ref()
            .map_or(Duration::ZERO, |f| {
                (f.at + f.window(retry)).saturating_duration_since(now)
            })
    }

    /// Opens a connection whose slot has already been counted in `total`, once the database
    /// and user limits allow one more, for a client waiting since `start`.
    async fn open_counted(&self, start: Instant) -> Result<Box<ServerConn>, PoolError> {
        let opening = Opening::new(self);
        let permits = match self.setup().timeouts.query_wait {
            Some(t) => tokio::time::timeout(t, self.limits.acquire(self))
                .await
                .map_err(|_| PoolError::WaitTimeout)?,
            None => self.limits.acquire(self).await,
        };
        let deadline = self.setup().timeouts.query_wait.map(|t| start + t);
        self.connect_counted(opening, permits, deadline).await
    }

    /// Opens a connection whose slot is counted (`opening`) and whose permits are in hand.
    /// A client's `deadline` (query_wait_timeout) bounds the wait before a login tried again:
    /// past it, the client gets the last login's error now rather than later.
    pub(super) async fn connect_counted(
        &self,
        mut opening: Opening<'_>,
        permits: Vec<tokio::sync::OwnedSemaphorePermit>,
        deadline: Option<Instant>,
    ) -> Result<Box<ServerConn>, PoolError> {
        let now = Instant::now();
        let wait = self.login_wait(now);
        if !wait.is_zero() {
            if deadline.is_some_and(|d| now + wait > d) {
                let why = self.lock().last_failure.as_ref().map(|f| f.why.clone());
                return Err(PoolError::LoginFailing {
                    detail: why.unwrap_or_else(|| "server login failed".into()),
                });
            }
            tokio::time::sleep(wait).await;
        }
        opening.logging_in(true);
        let setup = self.setup.load_full();
        let connected = ServerConn::connect(&setup.target, setup.timeouts.connect).await;
        opening.logging_in(false);
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
                    cancel_key: conn.cancel_key.clone(),
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
                let in_a_row = inner.last_failure.as_ref().map_or(0, |f| f.in_a_row) + 1;
                let failure = super::LoginFailure {
                    at: Instant::now(),
                    why: why.clone(),
                    in_a_row,
                };
                let down = failure.known_down(setup.timeouts.login_retry);
                inner.last_failure = Some(failure);
                if down && inner.total == 1 {
                    // This was the only connection, the server is down, and none can come
                    // back to the waiters: tell them now instead of letting them run into
                    // query_wait_timeout.
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
}
