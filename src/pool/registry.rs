//! All pools of the process: for each (database, user) pair, created on its first client, one
//! pool per node of the database (the primary, then each replica).

use super::{ClientLimits, Full, Limit, Limits, Pool, PoolStats};
use crate::auth::Secret;
use crate::cluster::{Cluster, Clusters};
use crate::config::Config;
use crate::server::{Credentials, Target};
use crate::stats::{FloorMetrics, PinMetrics, PoolFamilies};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The pools one client may use: one per node of its database, indexed like `cluster.nodes`.
pub struct Members {
    pub cluster: Arc<Cluster>,
    pub user: String,
    pub pools: Vec<Arc<Pool>>,
    /// The clients of this (database, user) by state.
    pub clients: ClientStates,
    pub pins: PinMetrics,
    /// The WAL position every client's reads must see (read_your_writes = "pool"), a byte
    /// offset; and the reads that waited for a replica to reach a floor.
    pub floor: AtomicU64,
    /// Clients whose commit's position is being learnt: until it is, a read of another
    /// client cannot know the floor. Told when one is learnt.
    pub floor_pending: AtomicUsize,
    pub floor_learnt: tokio::sync::Notify,
    pub floor_waits: FloorMetrics,
    /// The shared LISTEN connection of this (database, user).
    pub listener: Arc<super::listener::Listener>,
    /// Clients connected per database and user, every pool's.
    client_limits: Arc<ClientLimits>,
}

/// Clients connected, and waiting on a paused database. Clients linked to a server and
/// waiting in a pool's queue are the pools' to count: that costs the data path nothing.
#[derive(Debug, Default)]
pub struct ClientStates {
    connected: AtomicUsize,
    paused: AtomicUsize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    Connected,
    /// Waiting for RESUME.
    Paused,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientCounts {
    pub active: usize,
    pub waiting: usize,
    pub idle: usize,
}

impl ClientStates {
    fn cell(&self, state: ClientState) -> &AtomicUsize {
        match state {
            ClientState::Connected => &self.connected,
            ClientState::Paused => &self.paused,
        }
    }
}

/// Counts one client in a state for as long as it lives.
pub struct InState {
    members: Arc<Members>,
    state: ClientState,
}

impl Members {
    /// Each pool's stats, in node order.
    pub fn pool_stats(&self) -> Vec<PoolStats> {
        self.pools.iter().map(|p| p.stats()).collect()
    }

    /// The clients by state, given `pool_stats()`: active ones hold a server, waiting ones
    /// are in a pool's queue or held by PAUSE, idle ones are the rest.
    pub fn client_counts(&self, stats: &[PoolStats]) -> ClientCounts {
        let (mut active, mut waiting) = (0, self.clients.paused.load(Ordering::Relaxed));
        for s in stats {
            active += s.active;
            waiting += s.waiting;
        }
        let connected = self.clients.connected.load(Ordering::Relaxed);
        ClientCounts {
            active,
            waiting,
            idle: connected.saturating_sub(active + waiting),
        }
    }

    fn enter(self: &Arc<Self>, state: ClientState) -> InState {
        self.clients.cell(state).fetch_add(1, Ordering::Relaxed);
        InState {
            members: self.clone(),
            state,
        }
    }

    /// Counts a client as connected for as long as the `InState` lives, unless one more
    /// would pass max_db_client_connections or max_user_client_connections.
    pub fn connect(self: &Arc<Self>, config: &Config) -> Result<InState, Full> {
        let (db, user) = (self.cluster.database.as_str(), self.user.as_str());
        self.client_limits.join(
            (db, config.max_db_client_connections(db)),
            (user, config.max_user_client_connections(user)),
        )?;
        Ok(self.enter(ClientState::Connected))
    }

    /// Counts a client as waiting for RESUME for as long as the `InState` lives.
    pub fn paused(self: &Arc<Self>) -> InState {
        self.enter(ClientState::Paused)
    }
}

impl Drop for InState {
    fn drop(&mut self) {
        let m = &self.members;
        m.clients.cell(self.state).fetch_sub(1, Ordering::Relaxed);
        if self.state == ClientState::Connected {
            m.client_limits.leave(&m.cluster.database, &m.user);
        }
    }
}

impl Members {
    pub fn primary(&self) -> &Arc<Pool> {
        &self.pools[self.cluster.primary()]
    }
}

pub struct Pools {
    /// Where each new pool takes its metric handles from.
    families: Arc<PoolFamilies>,
    map: Mutex<HashMap<(String, String), Arc<Members>>>,
    db_limits: Mutex<HashMap<String, Arc<Limit>>>,
    user_limits: Mutex<HashMap<String, Arc<Limit>>>,
    pub client_limits: Arc<ClientLimits>,
}

fn shared_limit(
    map: &Mutex<HashMap<String, Arc<Limit>>>,
    name: &str,
    max: usize,
) -> Option<Arc<Limit>> {
    if max == 0 {
        return None;
    }
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    Some(
        map.entry(name.to_owned())
            .or_insert_with(|| Limit::new(max))
            .clone(),
    )
}

/// Who a pool of (database, user) logs in to servers as: the database's own login, else the
/// user with its configured password, else with what auth_query found (`looked`).
fn credentials(
    config: &Config,
    database: &str,
    user: &str,
    looked: Option<&Secret>,
) -> Option<Credentials> {
    config.database(database)?;
    Some(
        Cluster::configured_credentials(config, database).unwrap_or_else(|| Credentials {
            user: user.to_owned(),
            secret: config.user_secret(user).or_else(|| looked.cloned()),
        }),
    )
}

fn target(config: &Config, cluster: &Cluster, node: usize, credentials: &Credentials) -> Target {
    cluster.target(node, credentials, &config.general)
}

impl Pools {
    pub fn new(families: Arc<PoolFamilies>) -> Pools {
        Pools {
            families,
            map: Mutex::default(),
            db_limits: Mutex::default(),
            user_limits: Mutex::default(),
            client_limits: Arc::default(),
        }
    }

    /// The pools for a client of `database` logged in as `user`, one per node of the
    /// database's cluster; `None` if the database is unknown.
    pub fn members(
        &self,
        config: &Config,
        clusters: &Clusters,
        database: &str,
        user: &str,
    ) -> Option<Arc<Members>> {
        self.members_for(config, clusters, database, user, None)
    }

    /// `members`, for a user whose secret auth_query found: the pools log in to servers with
    /// it, and take a new one (a rotated password) from the next client that brings it.
    pub fn members_for(
        &self,
        config: &Config,
        clusters: &Clusters,
        database: &str,
        user: &str,
        looked: Option<&Secret>,
    ) -> Option<Arc<Members>> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let key = (database.to_owned(), user.to_owned());
        if let Some(m) = map.get(&key) {
            if looked.is_some() {
                let credentials = credentials(config, database, user, looked)?;
                if m.primary().setup().target.credentials != credentials {
                    let settings = config.pool_settings(database, user)?;
                    for (i, pool) in m.pools.iter().enumerate() {
                        let target = target(config, &m.cluster, i, &credentials);
                        pool.reconfigure(config, settings.clone(), target);
                    }
                }
            }
            return Some(m.clone());
        }
        let settings = config.pool_settings(database, user)?;
        let cluster = clusters.get_or_add(config, database)?;
        let credentials = credentials(config, database, user, looked)?;
        cluster.offer_credentials(&credentials);
        let mut pools = Vec::with_capacity(cluster.nodes.len());
        for (i, node) in cluster.nodes.iter().enumerate() {
            let target = target(config, &cluster, i, &credentials);
            // Limits count per node: a replica's connections take nothing from the primary.
            let limits = Limits {
                db: shared_limit(
                    &self.db_limits,
                    &format!("{database}@{}", node.addr),
                    config.max_db_connections(database),
                ),
                user: shared_limit(
                    &self.user_limits,
                    &format!("{user}@{}", node.addr),
                    config.max_user_connections(user),
                ),
            };
            let pool = Arc::new(Pool::new(
                (database, user, i),
                settings.clone(),
                target,
                limits.clone(),
                config,
                self.families.for_pool(database, user, &node.addr),
            ));
            for limit in [&limits.db, &limits.user].into_iter().flatten() {
                limit.add_pool(&pool);
            }
            pools.push(pool);
        }
        let members = Arc::new(Members {
            cluster,
            user: user.to_owned(),
            pools,
            clients: ClientStates::default(),
            pins: self.families.for_pins(database, user),
            floor: AtomicU64::new(0),
            floor_pending: AtomicUsize::new(0),
            floor_learnt: tokio::sync::Notify::new(),
            floor_waits: self.families.for_floor(database, user),
            listener: super::listener::Listener::new(),
            client_limits: self.client_limits.clone(),
        });
        map.insert(key, members.clone());
        Some(members)
    }

    /// Applies a reloaded configuration to the pools. Pools of a database that is gone, or
    /// whose cluster changed, leave the registry: new clients get new pools, and clients
    /// already connected keep theirs until they leave. The others take the new settings.
    pub fn reload(&self, config: &Config, clusters: &Clusters) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|(database, user), members| {
            let same = clusters
                .get(database)
                .is_some_and(|c| Arc::ptr_eq(&c, &members.cluster));
            // A secret auth_query found is kept: the reload did not bring it.
            let looked = config
                .auth_lookup(database)
                .and_then(|_| members.primary().setup().target.credentials.secret.clone());
            let (Some(settings), Some(credentials), true) = (
                config.pool_settings(database, user),
                credentials(config, database, user, looked.as_ref()),
                same,
            ) else {
                return false;
            };
            for (i, pool) in members.pools.iter().enumerate() {
                let target = target(config, &members.cluster, i, &credentials);
                pool.reconfigure(config, settings.clone(), target);
            }
            true
        });
    }

    /// Whether no client is connected to `database`, under any user, and none of its servers
    /// is in use or being opened.
    pub fn unused(&self, database: &str) -> bool {
        self.all_members()
            .iter()
            .filter(|m| m.cluster.database == database)
            .all(|m| {
                m.clients.connected.load(Ordering::Relaxed) == 0
                    && m.clients.paused.load(Ordering::Relaxed) == 0
                    && m.pools.iter().all(|p| {
                        let s = p.stats();
                        s.active == 0 && s.login == 0 && s.waiting == 0
                    })
            })
    }

    /// Drops `database`'s pools and closes their idle servers. A client that got one of them
    /// in the meantime keeps it until it leaves, as after a reload.
    pub fn forget_database(&self, database: &str, why: &'static str) {
        let mut gone = Vec::new();
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(db, _), members| {
                let keep = db != database;
                if !keep {
                    gone.push(members.clone());
                }
                keep
            });
        for pool in gone.iter().flat_map(|m| m.pools.iter()) {
            pool.drain_idle(why);
        }
    }

    /// Closes the idle connections of every pool of `node` in `database`'s cluster.
    pub fn drain_node(&self, database: &str, node: usize) {
        for members in self.all_members() {
            if members.cluster.database == database {
                if let Some(pool) = members.pools.get(node) {
                    pool.drain_idle("node banned or back from a ban");
                }
            }
        }
    }

    pub fn all_members(&self) -> Vec<Arc<Members>> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.all_members()
            .iter()
            .flat_map(|m| m.pools.iter().cloned())
            .collect()
    }

    /// Reaps and warms every pool once a second, for as long as the process runs.
    pub async fn maintain_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for pool in self.all() {
                // Each pool on its own task, so a slow server connect delays no other pool;
                // a pool still busy from the last tick is skipped.
                if !pool
                    .maintaining
                    .swap(true, std::sync::atomic::Ordering::AcqRel)
                {
                    tokio::spawn(async move {
                        pool.maintain().await;
                        pool.maintaining
                            .store(false, std::sync::atomic::Ordering::Release);
                    });
                }
            }
        }
    }
}
