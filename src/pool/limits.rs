//! max_db_connections and max_user_connections: server connections counted across all pools
//! of one database, or of one user. Each connection holds a permit for as long as it exists,
//! so every way a connection can end gives its permit back.

use super::Pool;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One shared limit and the pools that draw on it.
pub struct Limit {
    permits: Arc<Semaphore>,
    pools: Mutex<Vec<Weak<Pool>>>,
    /// Pools waiting for a permit: while there are any, connections going idle are closed
    /// instead, so their permits move to where they are needed.
    waiting: AtomicUsize,
}

impl Limit {
    pub fn new(max: usize) -> Arc<Limit> {
        Arc::new(Limit {
            permits: Arc::new(Semaphore::new(max)),
            pools: Mutex::default(),
            waiting: AtomicUsize::new(0),
        })
    }

    pub fn add_pool(&self, pool: &Arc<Pool>) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|p| p.strong_count() > 0);
        pools.push(Arc::downgrade(pool));
    }

    /// Closes one idle connection of another pool under this limit, freeing its permit, as
    /// PgBouncer does when a pool needs room.
    fn evict_idle(&self, except: &Pool) -> bool {
        let pools: Vec<_> = self.pools.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for pool in pools.iter().filter_map(Weak::upgrade) {
            if std::ptr::eq(&*pool, except) {
                continue;
            }
            if let Some(conn) = pool.take_idle() {
                tokio::spawn(
                    conn.close("max_db_connections/max_user_connections: room for another pool"),
                );
                return true;
            }
        }
        false
    }
}

/// The limits one pool answers to.
#[derive(Default, Clone)]
pub struct Limits {
    pub db: Option<Arc<Limit>>,
    pub user: Option<Arc<Limit>>,
}

impl Limits {
    /// Takes a permit from each limit, closing idle connections of sibling pools or waiting
    /// for permits when none is free. Permits are taken database first, then user, always in
    /// that order, so two pools cannot each hold what the other waits for.
    pub async fn acquire(&self, pool: &Pool) -> Vec<OwnedSemaphorePermit> {
        let mut permits = Vec::new();
        for limit in [&self.db, &self.user].into_iter().flatten() {
            let permit = match limit.permits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    limit.evict_idle(pool);
                    limit.waiting.fetch_add(1, Ordering::Relaxed);
                    let _waiting = Waiting(limit);
                    match limit.permits.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => continue, // closed semaphores are never made
                    }
                }
            };
            permits.push(permit);
        }
        permits
    }

    /// Permits only if all are free right now; for warming pools, which must not take room
    /// from clients.
    pub fn try_acquire(&self) -> Option<Vec<OwnedSemaphorePermit>> {
        [&self.db, &self.user]
            .into_iter()
            .flatten()
            .map(|l| l.permits.clone().try_acquire_owned().ok())
            .collect()
    }

    /// Another pool under one of these limits waits for a permit.
    pub fn contended(&self) -> bool {
        [&self.db, &self.user]
            .into_iter()
            .flatten()
            .any(|l| l.waiting.load(Ordering::Relaxed) > 0)
    }
}

/// Counts a pool as waiting for as long as its acquire is pending (also when cancelled).
struct Waiting<'a>(&'a Limit);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}
