//! The topology of each database (its primary and streaming replicas) and what is known of
//! their health: bans, replication lag, queries in flight.
//!
//! The state is a handful of atomics per node, so the router reads it on every decision
//! without a lock. The data path bans a node the moment it fails; `health` checks every node
//! on a timer, measures lag, and lifts a ban only once a check passes.

pub mod health;

use crate::config::{Config, LoadBalance, ReadFromPrimary};
use crate::server::Credentials;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
}

/// Whether a node may take reads right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usable {
    Yes,
    Banned,
    Lagging,
}

/// A node's health as the data path and the health checker leave it. A ban keeps what was
/// known of the lag, so that a node that comes back lagging is still seen lagging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Up,
    Lagging,
    /// No reads until a health check passes; none is even tried before `checks_from`
    /// (milliseconds since the cluster's epoch).
    Banned {
        checks_from: u64,
        lagging: bool,
    },
}

impl Health {
    /// One word, so that the router reads it without a lock: bit 0 is the lag, the rest is
    /// zero or one past the ban's end.
    fn encode(self) -> u64 {
        match self {
            Health::Up => 0,
            Health::Lagging => 1,
            Health::Banned {
                checks_from,
                lagging,
            } => ((checks_from + 1) << 1) | u64::from(lagging),
        }
    }

    fn decode(word: u64) -> Health {
        let lagging = word & 1 == 1;
        match word >> 1 {
            0 if lagging => Health::Lagging,
            0 => Health::Up,
            until => Health::Banned {
                checks_from: until - 1,
                lagging,
            },
        }
    }

    fn lagging(self) -> bool {
        match self {
            Health::Up => false,
            Health::Lagging => true,
            Health::Banned { lagging, .. } => lagging,
        }
    }

    /// Banned until at least `checks_from`.
    fn banned(self, checks_from: u64) -> Health {
        Health::Banned {
            checks_from,
            lagging: self.lagging(),
        }
    }

    /// A health check passed: the ban, if any, is over.
    fn checked(self) -> Health {
        Health::with_lag(self.lagging())
    }

    /// The lag measured now, under whatever ban there is.
    fn lag(self, lagging: bool) -> Health {
        match self {
            Health::Banned { checks_from, .. } => Health::Banned {
                checks_from,
                lagging,
            },
            _ => Health::with_lag(lagging),
        }
    }

    fn with_lag(lagging: bool) -> Health {
        if lagging {
            Health::Lagging
        } else {
            Health::Up
        }
    }

    pub fn usable(self) -> Usable {
        match self {
            Health::Up => Usable::Yes,
            Health::Lagging => Usable::Lagging,
            Health::Banned { .. } => Usable::Banned,
        }
    }
}

/// What the last health check found of the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reachability {
    NotChecked = 0,
    Reachable = 1,
    Unreachable = 2,
}

impl Reachability {
    fn from_u8(v: u8) -> Reachability {
        match v {
            0 => Reachability::NotChecked,
            1 => Reachability::Reachable,
            _ => Reachability::Unreachable,
        }
    }
}

#[derive(Debug)]
pub struct Node {
    pub role: Role,
    pub host: String,
    pub port: u16,
    pub weight: u32,
    /// `host:port`, as logs and metrics name the node.
    pub addr: String,
    /// A [`Health`], encoded.
    health: AtomicU64,
    lag_bytes: AtomicU64,
    lag_ms: AtomicU64,
    /// Client links to this node right now (least_outstanding counts these).
    outstanding: AtomicUsize,
}

impl Node {
    fn new(role: Role, host: &str, port: u16, weight: u32) -> Node {
        Node {
            role,
            host: host.to_owned(),
            port,
            weight,
            addr: if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            },
            health: AtomicU64::new(Health::Up.encode()),
            lag_bytes: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            outstanding: AtomicUsize::new(0),
        }
    }

    pub fn health(&self) -> Health {
        Health::decode(self.health.load(Ordering::Relaxed))
    }

    pub fn usable(&self) -> Usable {
        self.health().usable()
    }

    /// Applies `change` to the health; returns the health before.
    fn update(&self, change: impl Fn(Health) -> Health) -> Health {
        let before = self
            .health
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                Some(change(Health::decode(w)).encode())
            })
            .expect("the update always yields a value");
        Health::decode(before)
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Replication lag as last measured: bytes of WAL and time behind the primary.
    pub fn lag(&self) -> (u64, Duration) {
        (
            self.lag_bytes.load(Ordering::Relaxed),
            Duration::from_millis(self.lag_ms.load(Ordering::Relaxed)),
        )
    }
}

/// What makes two configurations of a database the same cluster: a reload that changes any
/// of it makes a new one.
#[derive(Debug, Clone, PartialEq)]
struct Topology {
    nodes: Vec<(String, u16, u32)>,
    dbname: String,
    read_from_primary: ReadFromPrimary,
    load_balance: LoadBalance,
}

impl Topology {
    fn of(config: &Config, database: &str) -> Option<Topology> {
        let db = config.databases.get(database)?;
        let mut nodes = vec![(db.host.clone(), db.port, 1)];
        nodes.extend(
            db.replica_list()
                .into_iter()
                .map(|r| (r.host, r.port, r.weight)),
        );
        Some(Topology {
            nodes,
            dbname: db.dbname.clone().unwrap_or_else(|| database.to_owned()),
            read_from_primary: db.read_from_primary,
            load_balance: db.load_balance,
        })
    }
}

/// One database's nodes; `nodes[0]` is the primary.
#[derive(Debug)]
pub struct Cluster {
    pub database: String,
    topology: Topology,
    /// The database's name on the servers.
    pub dbname: String,
    pub nodes: Vec<Node>,
    pub read_from_primary: ReadFromPrimary,
    pub load_balance: LoadBalance,
    /// Replica indices in weighted round-robin order, and the same with the primary as a
    /// member (the router decides which applies).
    replicas_schedule: Vec<usize>,
    all_schedule: Vec<usize>,
    /// Position in a schedule of the next round-robin read.
    pub next: AtomicUsize,
    /// Who the health checks log in as: the database's server user, or else the first
    /// client pool's login.
    credentials: Mutex<Option<Credentials>>,
    epoch: Instant,
    /// A [`Reachability`].
    primary_state: AtomicU8,
    /// PAUSE: clients get no server until RESUME.
    paused: AtomicBool,
    resumed: tokio::sync::Notify,
    /// DISABLE: new clients are refused until ENABLE.
    disabled: AtomicBool,
}

impl Cluster {
    pub fn new(config: &Config, database: &str) -> Option<Cluster> {
        let topology = Topology::of(config, database)?;
        let nodes: Vec<Node> = topology
            .nodes
            .iter()
            .enumerate()
            .map(|(i, (host, port, weight))| {
                let role = if i == 0 { Role::Primary } else { Role::Replica };
                Node::new(role, host, *port, *weight)
            })
            .collect();
        let all: Vec<usize> = (0..nodes.len()).collect();
        let weight = |i: usize| nodes[i].weight;
        let credentials = Cluster::configured_credentials(config, database);
        Some(Cluster {
            database: database.to_owned(),
            dbname: topology.dbname.clone(),
            replicas_schedule: interleave(&all[1..], weight),
            all_schedule: interleave(&all, weight),
            nodes,
            read_from_primary: topology.read_from_primary,
            load_balance: topology.load_balance,
            topology,
            next: AtomicUsize::new(0),
            credentials: Mutex::new(credentials),
            epoch: Instant::now(),
            primary_state: AtomicU8::new(Reachability::NotChecked as u8),
            paused: AtomicBool::new(false),
            resumed: tokio::sync::Notify::new(),
            disabled: AtomicBool::new(false),
        })
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    pub fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
        if !paused {
            self.resumed.notify_waiters();
        }
    }

    /// Waits while the database is paused.
    pub async fn wait_resumed(&self) {
        loop {
            let resumed = self.resumed.notified();
            tokio::pin!(resumed);
            // Registered before the check, so a RESUME in between is not missed.
            resumed.as_mut().enable();
            if !self.is_paused() {
                return;
            }
            resumed.await;
        }
    }

    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }

    pub fn disable(&self, disabled: bool) {
        self.disabled.store(disabled, Ordering::Relaxed);
    }

    /// Whether the primary answered the last health check.
    pub fn primary_reachable(&self) -> Reachability {
        Reachability::from_u8(self.primary_state.load(Ordering::Relaxed))
    }

    fn set_primary_reachable(&self, ok: bool) {
        let now = if ok {
            Reachability::Reachable
        } else {
            Reachability::Unreachable
        };
        let was = Reachability::from_u8(self.primary_state.swap(now as u8, Ordering::Relaxed));
        if was != Reachability::NotChecked && was != now {
            if ok {
                tracing::info!(db = %self.database, node = %self.nodes[0].addr, "primary reachable again");
            } else {
                tracing::warn!(db = %self.database, node = %self.nodes[0].addr, "primary unreachable");
            }
        }
    }

    pub fn has_replicas(&self) -> bool {
        self.nodes.len() > 1
    }

    /// The weighted round-robin order of reads: over the replicas, or with the primary as a
    /// member too.
    pub fn schedule(&self, with_primary: bool) -> &[usize] {
        if with_primary {
            &self.all_schedule
        } else {
            &self.replicas_schedule
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Takes a node out of the read rotation for `ban_time`. True if it was not banned
    /// already (the caller then closes its idle connections). The primary keeps taking
    /// writes whatever its state; a ban only keeps reads away from it.
    pub fn ban(&self, node: usize, ban_time: Duration, why: &str) -> bool {
        let n = &self.nodes[node];
        let until = self.now_ms() + ban_time.as_millis() as u64;
        let was = n.update(|h| h.banned(until));
        let was_up = !matches!(was, Health::Banned { .. });
        if was_up {
            tracing::warn!(db = %self.database, node = %n.addr, reason = why, ?ban_time, "node banned from reads");
        }
        was_up
    }

    /// True while a banned node's ban_time has not run out: no health check until then.
    pub fn in_ban_time(&self, node: usize) -> bool {
        match self.nodes[node].health() {
            Health::Banned { checks_from, .. } => checks_from > self.now_ms(),
            _ => false,
        }
    }

    /// A health check passed: reads may come back. True if the node was banned.
    fn check_passed(&self, node: usize) -> bool {
        let n = &self.nodes[node];
        let was_down = matches!(n.update(Health::checked), Health::Banned { .. });
        if was_down {
            tracing::info!(db = %self.database, node = %n.addr, "node back in the read rotation");
        }
        was_down
    }

    fn set_lag(&self, node: usize, bytes: u64, time: Duration, lagging: bool) {
        let n = &self.nodes[node];
        n.lag_bytes.store(bytes, Ordering::Relaxed);
        n.lag_ms.store(time.as_millis() as u64, Ordering::Relaxed);
        let was = n.update(|h| h.lag(lagging)).lagging();
        if was != lagging {
            tracing::warn!(db = %self.database, node = %n.addr, lag_bytes = bytes, lag = ?time, lagging, "replica lag limit crossed");
        }
    }

    /// Counts a client link to `node` for as long as the guard lives.
    pub fn link(self: &Arc<Self>, node: usize) -> InFlight {
        self.nodes[node].outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight {
            cluster: self.clone(),
            node,
        }
    }

    /// The database's own server login, when the configuration names one.
    pub fn configured_credentials(config: &Config, database: &str) -> Option<Credentials> {
        let db = config.databases.get(database)?;
        db.user.as_ref().map(|u| Credentials {
            user: u.clone(),
            secret: db
                .password
                .as_ref()
                .map(|p| crate::auth::Secret::Plain(p.clone())),
        })
    }

    /// Offers the login of a client pool for health checks, if none is known yet.
    pub fn offer_credentials(&self, credentials: &Credentials) {
        let mut c = self.credentials.lock().unwrap_or_else(|e| e.into_inner());
        if c.is_none() {
            *c = Some(credentials.clone());
        }
    }

    fn credentials(&self) -> Option<Credentials> {
        self.credentials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A link to a node, counted in its `outstanding`.
#[derive(Debug)]
pub struct InFlight {
    cluster: Arc<Cluster>,
    pub node: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.cluster.nodes[self.node]
            .outstanding
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Smooth weighted round-robin order: each member appears `weight` times, spread out rather
/// than in runs, so that a short burst of reads still reaches every member.
fn interleave(members: &[usize], weight: impl Fn(usize) -> u32) -> Vec<usize> {
    let total: i64 = members.iter().map(|&m| weight(m) as i64).sum();
    let mut current = vec![0i64; members.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, &m) in current.iter_mut().zip(members) {
            *c += weight(m) as i64;
        }
        let best = (0..members.len())
            .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
            .expect("members is not empty");
        current[best] -= total;
        out.push(members[best]);
    }
    out
}

/// Every database's cluster, made from the configuration.
#[derive(Debug, Default)]
pub struct Clusters {
    map: Mutex<BTreeMap<String, Arc<Cluster>>>,
}

impl Clusters {
    pub fn new(config: &Config) -> Clusters {
        let map = config
            .databases
            .keys()
            .filter_map(|name| Some((name.clone(), Arc::new(Cluster::new(config, name)?))))
            .collect();
        Clusters {
            map: Mutex::new(map),
        }
    }

    /// Applies a reloaded configuration: a database whose topology is unchanged keeps its
    /// cluster (and its health state); a new or changed one gets a new cluster; a removed
    /// one is dropped. Clients already connected keep the cluster they started with.
    pub fn reload(&self, config: &Config) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = BTreeMap::new();
        for name in config.databases.keys() {
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

    pub fn get(&self, database: &str) -> Option<Arc<Cluster>> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(database)
            .cloned()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_order_is_spread_out() {
        let order = interleave(&[1, 2], |m| if m == 1 { 2 } else { 1 });
        assert_eq!(order, vec![1, 2, 1]);
        let order = interleave(&[1, 2, 3], |_| 1);
        assert_eq!(order, vec![1, 2, 3]);
        let order = interleave(&[0, 1], |m| if m == 0 { 1 } else { 3 });
        assert_eq!(order.iter().filter(|&&m| m == 1).count(), 3);
        assert_ne!(order[..2], [1, 1][..], "{order:?}");
    }

    #[test]
    fn a_ban_holds_until_a_check_passes() {
        let text = "[databases.app]\nport = 5433\nreplicas = [\"127.0.0.1:5434\"]\n";
        let config = Config::parse(text, "t").unwrap();
        let c = Cluster::new(&config, "app").unwrap();
        assert_eq!(c.schedule(false), [1]);
        assert_eq!(c.schedule(true), [0, 1]);
        assert_eq!(c.nodes[1].usable(), Usable::Yes);
        assert!(c.ban(1, Duration::ZERO, "test"));
        assert!(!c.ban(1, Duration::ZERO, "test"), "already banned");
        assert_eq!(c.nodes[1].usable(), Usable::Banned);
        assert!(!c.in_ban_time(1));
        assert!(c.check_passed(1));
        assert_eq!(c.nodes[1].usable(), Usable::Yes);
        c.set_lag(1, 10, Duration::from_secs(2), true);
        assert_eq!(c.nodes[1].usable(), Usable::Lagging);
    }

    #[test]
    fn a_ban_remembers_the_lag_and_every_state_survives_its_encoding() {
        let banned = Health::Lagging.banned(5);
        assert_eq!(
            banned,
            Health::Banned {
                checks_from: 5,
                lagging: true
            }
        );
        assert_eq!(banned.checked(), Health::Lagging);
        assert_eq!(banned.lag(false).checked(), Health::Up);
        assert_eq!(Health::Up.lag(true), Health::Lagging);
        for h in [
            Health::Up,
            Health::Lagging,
            Health::Up.banned(0),
            Health::Lagging.banned(u64::MAX >> 2),
        ] {
            assert_eq!(Health::decode(h.encode()), h);
        }
    }
}
