//! The topology of each database (its primary and streaming replicas) and what is known of
//! their health: bans, replication lag, queries in flight.
//!
//! The state is a handful of atomics per node, so the router reads it on every decision
//! without a lock. The data path bans a node the moment it fails; `health` checks every node
//! on a timer, measures lag, and lifts a ban only once a check passes.

pub mod catalog;
mod clusters;
pub mod health;
mod lsn;
mod node;
pub mod replay;

pub use clusters::Clusters;
pub use lsn::Lsn;
pub use node::{BanTimes, Health, Node, Reachability, Role, Usable};

use crate::config::General;
use crate::config::{Config, LoadBalance, ReadFromPrimary, Roles};
use crate::server::{Credentials, Target};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What makes two configurations of a database the same cluster: a reload that changes any
/// of it makes a new one.
#[derive(Debug, Clone, PartialEq)]
struct Topology {
    nodes: Vec<(String, u16, u32)>,
    dbname: String,
    read_from_primary: ReadFromPrimary,
    load_balance: LoadBalance,
    roles: Roles,
}

impl Topology {
    fn of(config: &Config, database: &str) -> Option<Topology> {
        let db = config.database(database)?;
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
            roles: db.role,
        })
    }
}

/// Which node is the primary now, as the health checks found it (`role = "auto"`), in one
/// word: an index, or that more than one node claims to be primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leader {
    Node(usize),
    /// Two or more nodes are out of recovery at once: writes are refused until one remains.
    Contested,
}

impl Leader {
    fn encode(self) -> usize {
        match self {
            Leader::Node(i) => i,
            Leader::Contested => usize::MAX,
        }
    }

    fn decode(word: usize) -> Leader {
        match word {
            usize::MAX => Leader::Contested,
            i => Leader::Node(i),
        }
    }
}

/// One database's nodes: `nodes[0]` is the configured `host`, and the primary unless
/// `role = "auto"` finds another one.
#[derive(Debug)]
pub struct Cluster {
    pub database: String,
    topology: Topology,
    /// The database's name on the servers.
    pub dbname: String,
    pub nodes: Vec<Node>,
    pub read_from_primary: ReadFromPrimary,
    pub load_balance: LoadBalance,
    /// The nodes' roles are found by the health checks (`role = "auto"`).
    pub auto: bool,
    /// A [`Leader`], encoded.
    leader: AtomicUsize,
    /// For each node that may be primary, the other nodes in weighted round-robin order; and
    /// every node so (the router decides which applies).
    replicas_schedule: Vec<Vec<usize>>,
    all_schedule: Vec<usize>,
    /// Position in a schedule of the next round-robin read.
    pub next: AtomicUsize,
    /// The last node found to be the only primary, and the nodes out of recovery at the last
    /// check (a bit per node).
    last_primary: AtomicUsize,
    claims: AtomicU64,
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
    /// Rounds of health checks completed, so that a watcher can wait for a round that
    /// began after something it did.
    rounds: AtomicU64,
    /// Told after each poll of the replicas' replay positions, for reads that wait for one
    /// to catch up with their client's writes.
    replayed: tokio::sync::Notify,
    /// Asks the replay poller for a poll now rather than at its next tick.
    poll_now: tokio::sync::Notify,
    /// Told when a login for the pooler's own connections first becomes known.
    pub credentials_known: tokio::sync::Notify,
}

impl Cluster {
    pub fn new(config: &Config, database: &str) -> Option<Cluster> {
        let topology = Topology::of(config, database)?;
        let nodes: Vec<Node> = topology
            .nodes
            .iter()
            .map(|(host, port, weight)| Node::new(host, *port, *weight))
            .collect();
        let all: Vec<usize> = (0..nodes.len()).collect();
        let weight = |i: usize| nodes[i].weight;
        let auto = topology.roles == Roles::Auto;
        let candidates = if auto { nodes.len() } else { 1 };
        let replicas_schedule = (0..candidates)
            .map(|p| {
                let others: Vec<usize> = all.iter().copied().filter(|&i| i != p).collect();
                interleave(&others, weight)
            })
            .collect();
        let credentials = Cluster::configured_credentials(config, database);
        Some(Cluster {
            database: database.to_owned(),
            dbname: topology.dbname.clone(),
            auto,
            leader: AtomicUsize::new(0),
            replicas_schedule,
            all_schedule: interleave(&all, weight),
            nodes,
            read_from_primary: topology.read_from_primary,
            load_balance: topology.load_balance,
            topology,
            next: AtomicUsize::new(0),
            last_primary: AtomicUsize::new(0),
            claims: AtomicU64::new(1),
            credentials: Mutex::new(credentials),
            epoch: Instant::now(),
            primary_state: AtomicU8::new(Reachability::NotChecked as u8),
            paused: AtomicBool::new(false),
            resumed: tokio::sync::Notify::new(),
            disabled: AtomicBool::new(false),
            rounds: AtomicU64::new(0),
            replayed: tokio::sync::Notify::new(),
            poll_now: tokio::sync::Notify::new(),
            credentials_known: tokio::sync::Notify::new(),
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

    /// Rounds of health checks completed so far.
    pub fn health_rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    fn round_done(&self) {
        self.rounds.fetch_add(1, Ordering::Relaxed);
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
                tracing::info!(db = %self.database, node = %self.nodes[self.primary()].addr, "primary reachable again");
            } else {
                tracing::warn!(db = %self.database, node = %self.nodes[self.primary()].addr, "primary unreachable");
            }
        }
    }

    pub fn has_replicas(&self) -> bool {
        self.nodes.len() > 1
    }

    /// Which node is the primary now.
    pub fn leader(&self) -> Leader {
        Leader::decode(self.leader.load(Ordering::Relaxed))
    }

    /// The node writes go to: the primary, or while two nodes claim to be, the last one
    /// found alone (writes are refused then; see `leader`).
    pub fn primary(&self) -> usize {
        match self.leader() {
            Leader::Node(i) => i,
            Leader::Contested => self.last_primary.load(Ordering::Relaxed),
        }
    }

    pub fn role(&self, node: usize) -> Role {
        match self.leader() {
            Leader::Node(i) if i == node => Role::Primary,
            Leader::Contested if self.claims.load(Ordering::Relaxed) & (1 << node.min(63)) != 0 => {
                Role::Primary
            }
            _ => Role::Replica,
        }
    }

    /// The health checks found `leader`, with `claims` the bit set of nodes out of
    /// recovery. True when the primary moved to another node.
    pub(crate) fn set_leader(&self, leader: Leader, claims: u64) -> bool {
        self.claims.store(claims, Ordering::Relaxed);
        let was = Leader::decode(self.leader.swap(leader.encode(), Ordering::Relaxed));
        if was == leader {
            return false;
        }
        match leader {
            Leader::Node(i) => {
                let before = self.last_primary.swap(i, Ordering::Relaxed);
                tracing::warn!(db = %self.database, node = %self.nodes[i].addr, "primary is now this node");
                before != i
            }
            Leader::Contested => {
                tracing::error!(db = %self.database, claims, "more than one node claims to be primary: writes refused until one remains");
                false
            }
        }
    }

    /// The weighted round-robin order of reads: over the replicas, or with the primary as a
    /// member too.
    pub fn schedule(&self, with_primary: bool) -> &[usize] {
        if with_primary {
            &self.all_schedule
        } else {
            let p = self.primary().min(self.replicas_schedule.len() - 1);
            &self.replicas_schedule[p]
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Takes a node out of the read rotation after a failure, for as long as `times` says
    /// (see [`BanTimes`]). True if it was not banned already (the caller then closes its idle
    /// connections). The primary keeps taking writes whatever its state; a ban only keeps
    /// reads away from it.
    pub fn ban(&self, node: usize, times: BanTimes, why: &str) -> bool {
        let n = &self.nodes[node];
        let now = self.now_ms();
        let mut strikes = n.strikes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(ban) = strikes.fail(n.health(), now, times) else {
            return false;
        };
        let was = n.update(|h| h.banned(now + ban.as_millis() as u64));
        // Unknown until polled again: it may come back having replayed less.
        n.replayed.store(0, Ordering::Relaxed);
        let was_up = !matches!(was, Health::Banned { .. });
        tracing::warn!(db = %self.database, node = %n.addr, reason = why, ?ban, "node banned from reads");
        was_up
    }

    /// True while a banned node's ban_time has not run out: no health check until then.
    pub fn in_ban_time(&self, node: usize) -> bool {
        match self.nodes[node].health() {
            Health::Banned { checks_from, .. } => checks_from > self.now_ms(),
            _ => false,
        }
    }

    /// How long until the soonest running ban runs out (and its node may be checked), if any
    /// ban is running.
    pub fn next_ban_end(&self) -> Option<Duration> {
        let now = self.now_ms();
        self.nodes
            .iter()
            .filter_map(|n| match n.health() {
                Health::Banned { checks_from, .. } if checks_from > now => Some(checks_from - now),
                _ => None,
            })
            .min()
            // Just past the end, so that the node is out of its ban time when checked.
            .map(|ms| Duration::from_millis(ms + 1))
    }

    /// A health check passed: reads may come back. True if the node was banned.
    fn check_passed(&self, node: usize) -> bool {
        let n = &self.nodes[node];
        let mut strikes = n.strikes.lock().unwrap_or_else(|e| e.into_inner());
        let was_down = matches!(n.update(Health::checked), Health::Banned { .. });
        if was_down {
            strikes.back(self.now_ms());
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

    /// A replica's replay position, as polled. It may go back: a replica restarted after a
    /// crash replays again from its last restart point.
    pub(crate) fn set_replayed(&self, node: usize, lsn: Lsn) {
        self.nodes[node].replayed.store(lsn.0, Ordering::Relaxed);
    }

    /// Waits until the replay positions have been polled again (asking for a poll now), or
    /// until `deadline`. False when the deadline came first.
    pub async fn replay_polled(&self, deadline: tokio::time::Instant) -> bool {
        let polled = self.replayed.notified();
        tokio::pin!(polled);
        polled.as_mut().enable();
        self.poll_now.notify_one();
        tokio::time::timeout_at(deadline, polled).await.is_ok()
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
        let db = config.database(database)?;
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
            self.credentials_known.notify_waiters();
        }
    }

    /// Where a connection to `node` goes, logged in as `credentials`.
    pub fn target(&self, node: usize, credentials: &Credentials, general: &General) -> Target {
        let n = &self.nodes[node];
        Target {
            host: n.host.clone(),
            port: n.port,
            dbname: self.dbname.clone(),
            credentials: credentials.clone(),
            tls: general.server_tls(),
            tcp: crate::server::tcp_tuning(general),
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
        let times = BanTimes {
            first: Duration::ZERO,
            longest: Duration::ZERO,
        };
        assert!(c.ban(1, times, "test"));
        assert!(!c.ban(1, times, "test"), "already banned");
        assert_eq!(c.nodes[1].usable(), Usable::Banned);
        assert!(!c.in_ban_time(1));
        assert!(c.check_passed(1));
        assert_eq!(c.nodes[1].usable(), Usable::Yes);
        c.set_lag(1, 10, Duration::from_secs(2), true);
        assert_eq!(c.nodes[1].usable(), Usable::Lagging);
    }

    #[test]
    fn the_checker_is_told_when_the_soonest_ban_ends() {
        let text =
            "[databases.app]\nport = 5433\nreplicas = [\"127.0.0.1:5434\", \"127.0.0.1:5435\"]\n";
        let c = Cluster::new(&Config::parse(text, "t").unwrap(), "app").unwrap();
        assert_eq!(c.next_ban_end(), None);
        let ban = |first| BanTimes {
            first: Duration::from_secs(first),
            longest: Duration::from_secs(60),
        };
        c.ban(1, ban(30), "test");
        c.ban(2, ban(5), "test");
        let end = c.next_ban_end().unwrap();
        assert!(
            end <= Duration::from_millis(5001) && end > Duration::from_secs(4),
            "{end:?}"
        );
    }
}
