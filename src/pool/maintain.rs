//! A pool's upkeep: reconfiguration by a reload, reaping of idle and expired connections,
//! warming to min_pool_size, trying a failed login again, RECONNECT, and closing idle
//! connections when a node is banned.

use super::checkout::Opening;
use super::{Pool, Setup, Timeouts};
use crate::config::{Config, PoolSettings};
use crate::server::{ServerConn, Target};
use std::sync::Arc;
use std::time::Instant;

impl Pool {
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
            let setup = self.setup();
            let mut inner = self.lock();
            let mut keep = Vec::with_capacity(inner.idle.len());
            let mut total = inner.total;
            for conn in inner.idle.drain(..) {
                let idle_out = setup.timeouts.idle.is_some_and(|t| conn.idle_for(now) >= t)
                    && total > setup.settings.min_pool_size;
                if idle_out || Pool::expired(&setup, &conn, now) {
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
                let now = Instant::now();
                let retry = self.setup().timeouts.login_retry;
                // After failed logins, one is tried again here once its wait is over, while
                // clients still ask (within four server_login_retry): clients whose
                // query_wait_timeout is shorter than that wait fail without trying, and would
                // otherwise never learn that the server is back.
                let asked = inner
                    .wanted
                    .is_some_and(|w| now.duration_since(w) < retry * 4);
                let probe = inner.total == 0
                    && asked
                    && inner
                        .last_failure
                        .as_ref()
                        .is_some_and(|f| now >= f.at + f.window(retry));
                let want = self
                    .setup()
                    .settings
                    .min_pool_size
                    .min(self.setup().settings.pool_size)
                    .max(usize::from(probe));
                if inner.total >= want || self.may_connect(&inner, now).is_err() {
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
            let opening = Opening::new(self);
            match self.connect_counted(opening, permits, None).await {
                Ok(conn) => self.release(conn, true),
                Err(_) => return,
            }
        }
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

    /// Closes every idle connection, and forgets a failed login so that the next client may
    /// try at once: the node has just been banned or has just come back.
    pub fn drain_idle(&self, why: &'static str) {
        self.lock().last_failure = None;
        self.close_idle(why, |idle, _| std::mem::take(idle));
    }

    /// Closes the idle connections `pick` takes out of the idle list (given it and the
    /// pool's total), and lets waiters have the room.
    pub(super) fn close_idle(
        &self,
        why: &'static str,
        pick: impl FnOnce(&mut Vec<Box<ServerConn>>, usize) -> Vec<Box<ServerConn>>,
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
    pub(super) fn take_idle(&self) -> Option<Box<ServerConn>> {
        let mut inner = self.lock();
        let conn = inner.idle.pop()?;
        inner.total -= 1;
        self.slot_freed(inner);
        Some(conn)
    }
}
