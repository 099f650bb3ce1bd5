//! All pools of the process, created on first use of a (database, user) pair.

use super::{Limit, Limits, Pool};
use crate::auth::Secret;
use crate::config::Config;
use crate::server::{Credentials, Target};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
pub struct Pools {
    map: Mutex<HashMap<(String, String), Arc<Pool>>>,
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
    /// The pool for a client of `database` logged in as `user`; `None` if the database is unknown.
    pub fn get(&self, config: &Config, database: &str, user: &str) -> Option<Arc<Pool>> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let key = (database.to_owned(), user.to_owned());
        if let Some(p) = map.get(&key) {
            return Some(p.clone());
        }
        let settings = config.pool_settings(database, user)?;
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
        let target = Target {
            host: db.host.clone(),
            port: db.port,
            dbname: db.dbname.clone().unwrap_or_else(|| database.to_owned()),
            credentials,
        };
        let limits = Limits {
            db: shared_limit(
                &self.db_limits,
                database,
                config.max_db_connections(database),
            ),
            user: shared_limit(&self.user_limits, user, config.max_user_connections(user)),
        };
        let pool = Arc::new(Pool::new(
            database,
            user,
            settings,
            target,
            limits.clone(),
            config,
        ));
        for limit in [&limits.db, &limits.user].into_iter().flatten() {
            limit.add_pool(&pool);
        }
        map.insert(key, pool.clone());
        Some(pool)
    }

    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
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
