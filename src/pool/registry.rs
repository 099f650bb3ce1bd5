//! All pools of the process: for each (database, user) pair, created on its first client, one
//! pool per node of the database (the primary, then each replica).

use super::{Limit, Limits, Pool};
use crate::auth::Secret;
use crate::cluster::{Cluster, Clusters};
use crate::config::Config;
use crate::server::{Credentials, Target};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The pools one client may use: one per node of its database, indexed like `cluster.nodes`.
pub struct Members {
    pub cluster: Arc<Cluster>,
    pub pools: Vec<Arc<Pool>>,
}

impl Members {
    pub fn primary(&self) -> &Arc<Pool> {
        &self.pools[0]
    }
}

#[derive(Default)]
pub struct Pools {
    map: Mutex<HashMap<(String, String), Arc<Members>>>,
    db_limits: Mutex<HashMap<String, Arc<Limit>>>,
    user_limits: Mutex<HashMap<String, Arc<Limit>>>,
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

impl Pools {
    /// The pools for a client of `database` logged in as `user`, one per node of the
    /// database's cluster; `None` if the database is unknown.
    pub fn members(
        &self,
        config: &Config,
        clusters: &Clusters,
        database: &str,
        user: &str,
    ) -> Option<Arc<Members>> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let key = (database.to_owned(), user.to_owned());
        if let Some(m) = map.get(&key) {
            return Some(m.clone());
        }
        let settings = config.pool_settings(database, user)?;
        let cluster = clusters.get(database)?;
        let db = &config.databases[database];
        let credentials = match &db.user {
            Some(u) => Credentials {
                user: u.clone(),
                secret: db.password.as_ref().map(|p| Secret::Plain(p.clone())),
            },
            None => Credentials {
                user: user.to_owned(),
                secret: config
                    .users
                    .get(user)
                    .and_then(|u| u.password.as_deref())
                    .and_then(|p| Secret::parse(p).ok()),
            },
        };
        cluster.offer_credentials(&credentials);
        let mut pools = Vec::with_capacity(cluster.nodes.len());
        for (i, node) in cluster.nodes.iter().enumerate() {
            let target = Target {
                host: node.host.clone(),
                port: node.port,
                dbname: cluster.dbname.clone(),
                credentials: credentials.clone(),
            };
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
                database,
                user,
                i,
                settings.clone(),
                target,
                limits.clone(),
                config,
            ));
            for limit in [&limits.db, &limits.user].into_iter().flatten() {
                limit.add_pool(&pool);
            }
            pools.push(pool);
        }
        let members = Arc::new(Members { cluster, pools });
        map.insert(key, members.clone());
        Some(members)
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

    fn all_members(&self) -> Vec<Arc<Members>> {
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
