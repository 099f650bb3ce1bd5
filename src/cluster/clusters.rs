//! Every database's cluster, made from the configuration: kept across a reload while a
//! database's topology is unchanged, and made on first use for a database the fallback `*`
//! section serves.

use super::{Cluster, Topology};
use crate::config::Config;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Every database's cluster, made from the configuration.
#[derive(Debug, Default)]
pub struct Clusters {
    map: Mutex<BTreeMap<String, Arc<Cluster>>>,
    /// Told when a client's first login to a database served by the fallback `*` section
    /// made a cluster for it.
    pub added: tokio::sync::Notify,
}

impl Clusters {
    pub fn new(config: &Config) -> Clusters {
        let map = config
            .databases
            .keys()
            .filter(|name| *name != crate::config::FALLBACK)
            .filter_map(|name| Some((name.clone(), Arc::new(Cluster::new(config, name)?))))
            .collect();
        Clusters {
            map: Mutex::new(map),
            added: tokio::sync::Notify::new(),
        }
    }

    /// The cluster of `database`, made on first use when the fallback `*` section serves it.
    pub fn get_or_add(&self, config: &Config, database: &str) -> Option<Arc<Cluster>> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(database) {
            return Some(c.clone());
        }
        if config.databases.contains_key(database) {
            return None;
        }
        let cluster = Arc::new(Cluster::new(config, database)?);
        map.insert(database.to_owned(), cluster.clone());
        drop(map);
        tracing::info!(db = %database, "database served by the fallback \"*\" section");
        self.added.notify_one();
        Some(cluster)
    }

    /// Applies a reloaded configuration: a database whose topology is unchanged keeps its
    /// cluster (and its health state); a new or changed one gets a new cluster; a removed
    /// one is dropped. Clients already connected keep the cluster they started with.
    pub fn reload(&self, config: &Config) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = BTreeMap::new();
        let listed = config
            .databases
            .keys()
            .filter(|n| *n != crate::config::FALLBACK);
        // Databases the fallback served stay while it does (and they are not listed now).
        let served: Vec<String> = match config.databases.contains_key(crate::config::FALLBACK) {
            true => map
                .keys()
                .filter(|n| !config.databases.contains_key(*n))
                .cloned()
                .collect(),
            false => Vec::new(),
        };
        for name in listed.chain(served.iter()) {
            let old = map.remove(name);
            let kept = old
                .clone()
                .filter(|c| Topology::of(config, name).as_ref() == Some(&c.topology));
            let cluster = match kept {
                Some(c) => {
                    if let Some(creds) = Cluster::configured_credentials(config, name) {
                        *c.credentials.lock().unwrap_or_else(|e| e.into_inner()) = Some(creds);
                    }
                    c
                }
                None => match Cluster::new(config, name) {
                    Some(c) => {
                        // PAUSE and DISABLE outlive a change of topology.
                        if let Some(old) = &old {
                            c.paused.store(old.is_paused(), Ordering::Relaxed);
                            c.disabled.store(old.is_disabled(), Ordering::Relaxed);
                        }
                        Arc::new(c)
                    }
                    None => continue,
                },
            };
            next.insert(name.clone(), cluster);
        }
        *map = next;
    }

    /// The clusters of the databases the fallback `*` section serves (not listed in `config`).
    pub fn fallback_served(&self, config: &Config) -> Vec<Arc<Cluster>> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .filter(|(name, _)| !config.databases.contains_key(*name))
            .map(|(_, c)| c.clone())
            .collect()
    }

    /// Forgets `database`'s cluster; the next client that asks for it makes a new one.
    pub fn forget(&self, database: &str) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(database);
    }

    pub fn get(&self, database: &str) -> Option<Arc<Cluster>> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(database)
            .cloned()
    }

    /// The databases clients may use by name: those listed (but the fallback `*`) and those
    /// the fallback has served so far, sorted, each with its settings.
    pub fn served<'c>(&self, config: &'c Config) -> Vec<(String, &'c crate::config::Database)> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<&String> = config
            .databases
            .keys()
            .filter(|n| *n != crate::config::FALLBACK)
            .chain(map.keys())
            .collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter_map(|n| Some((n.clone(), config.database(n)?)))
            .collect()
    }

    pub fn all(&self) -> Vec<Arc<Cluster>> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}
