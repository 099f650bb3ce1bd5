//! One node of a cluster (the primary or a replica): its address and weight, and its health
//! as one lock-free word the router reads on every decision (up, lagging, or banned until a
//! check passes, keeping what was known of the lag).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

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
    pub(super) fn encode(self) -> u64 {
        match self {
            Health::Up => 0,
            Health::Lagging => 1,
            Health::Banned {
                checks_from,
                lagging,
            } => ((checks_from + 1) << 1) | u64::from(lagging),
        }
    }

    pub(super) fn decode(word: u64) -> Health {
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

    pub(super) fn lagging(self) -> bool {
        match self {
            Health::Up => false,
            Health::Lagging => true,
            Health::Banned { lagging, .. } => lagging,
        }
    }

    /// Banned until at least `checks_from`.
    pub(super) fn banned(self, checks_from: u64) -> Health {
        Health::Banned {
            checks_from,
            lagging: self.lagging(),
        }
    }

    /// A health check passed: the ban, if any, is over.
    pub(super) fn checked(self) -> Health {
        Health::with_lag(self.lagging())
    }

    /// The lag measured now, under whatever ban there is.
    pub(super) fn lag(self, lagging: bool) -> Health {
        match self {
            Health::Banned { checks_from, .. } => Health::Banned {
                checks_from,
                lagging,
            },
            _ => Health::with_lag(lagging),
        }
    }

    pub(super) fn with_lag(lagging: bool) -> Health {
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
    pub(super) fn from_u8(v: u8) -> Reachability {
        match v {
            0 => Reachability::NotChecked,
            1 => Reachability::Reachable,
            _ => Reachability::Unreachable,
        }
    }
}

#[derive(Debug)]
pub struct Node {
    pub host: String,
    pub port: u16,
    pub weight: u32,
    /// `host:port`, as logs and metrics name the node.
    pub addr: String,
    /// A [`Health`], encoded.
    pub(super) health: AtomicU64,
    pub(super) lag_bytes: AtomicU64,
    pub(super) lag_ms: AtomicU64,
    /// A replica's replay position as last polled (read_your_writes), a byte offset.
    pub(super) replayed: AtomicU64,
    /// Client links to this node right now (least_outstanding counts these).
    pub(super) outstanding: AtomicUsize,
    /// Its bans so far; touched only when it fails or comes back.
    pub(super) strikes: Mutex<Strikes>,
}

/// How long a failing node is banned: `first` at first (health_check_interval), doubling
/// with each failure that follows soon after, up to `longest` (ban_time). A node that was
/// down for a moment is back in seconds; one that keeps failing is checked ever less often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BanTimes {
    pub first: Duration,
    pub longest: Duration,
}

impl BanTimes {
    pub fn of(general: &crate::config::General) -> BanTimes {
        BanTimes {
            first: general.health_check_interval.0,
            longest: general.ban_time.0,
        }
    }
}

/// What a node's bans leave behind: how many came in a row, and when it last came back.
#[derive(Debug, Default)]
pub(super) struct Strikes {
    in_a_row: u32,
    back_at: Option<u64>,
}

impl Strikes {
    /// The node failed at `now` (milliseconds since the cluster's epoch) while its health was
    /// `health`: how long it is banned. None while a ban is still running: failures then
    /// change nothing (several clients meeting the same dead node make one ban, not a longer
    /// one). A failure of the check after a ban, or within `longest` of coming back, doubles
    /// the ban; any other starts again from `first`.
    pub(super) fn fail(&mut self, health: Health, now: u64, times: BanTimes) -> Option<Duration> {
        let longest = times.longest.max(times.first);
        match health {
            Health::Banned { checks_from, .. } if checks_from > now => return None,
            Health::Banned { .. } => self.in_a_row += 1,
            Health::Up | Health::Lagging => {
                let window = longest.as_millis() as u64;
                let soon = self
                    .back_at
                    .is_some_and(|at| now.saturating_sub(at) <= window);
                self.in_a_row = if soon { self.in_a_row + 1 } else { 0 };
            }
        }
        let factor = 1u32.checked_shl(self.in_a_row.min(31)).unwrap_or(u32::MAX);
        Some(times.first.saturating_mul(factor).min(longest))
    }

    /// The node passed its check after a ban at `now`.
    pub(super) fn back(&mut self, now: u64) {
        self.back_at = Some(now);
    }
}

impl Node {
    pub(super) fn new(host: &str, port: u16, weight: u32) -> Node {
        Node {
            host: host.to_owned(),
            port,
            weight,
            addr: crate::config::host_port(host, port),
            health: AtomicU64::new(Health::Up.encode()),
            lag_bytes: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            outstanding: AtomicUsize::new(0),
            strikes: Mutex::default(),
        }
    }

    pub fn health(&self) -> Health {
        Health::decode(self.health.load(Ordering::Relaxed))
    }

    pub fn usable(&self) -> Usable {
        self.health().usable()
    }

    /// Applies `change` to the health; returns the health before.
    pub(super) fn update(&self, change: impl Fn(Health) -> Health) -> Health {
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

    /// How far a replica had replayed the WAL when last polled.
    pub fn replayed(&self) -> super::Lsn {
        super::Lsn(self.replayed.load(Ordering::Relaxed))
    }

    /// Replication lag as last measured: bytes of WAL and time behind the primary.
    pub fn lag(&self) -> (u64, Duration) {
        (
            self.lag_bytes.load(Ordering::Relaxed),
            Duration::from_millis(self.lag_ms.load(Ordering::Relaxed)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bans_double_while_the_node_keeps_failing_and_start_short_again_later() {
        let times = BanTimes {
            first: Duration::from_secs(5),
            longest: Duration::from_secs(60),
        };
        let secs = |s: u64| Some(Duration::from_secs(s));
        let mut s = Strikes::default();
        assert_eq!(
            s.fail(Health::Up, 0, times),
            secs(5),
            "a first failure: a short ban"
        );
        let banned = Health::Up.banned(5_000);
        assert_eq!(
            s.fail(banned, 1_000, times),
            None,
            "a ban that runs changes nothing"
        );
        assert_eq!(
            s.fail(banned, 5_000, times),
            secs(10),
            "its check failed: doubled"
        );
        assert_eq!(s.fail(Health::Up.banned(15_000), 15_000, times), secs(20));
        assert_eq!(s.fail(Health::Up.banned(35_000), 35_000, times), secs(40));
        assert_eq!(
            s.fail(Health::Up.banned(75_000), 75_000, times),
            secs(60),
            "capped"
        );
        s.back(135_000);
        assert_eq!(
            s.fail(Health::Up, 140_000, times),
            secs(60),
            "failing again soon after"
        );
        s.back(200_000);
        assert_eq!(
            s.fail(Health::Lagging, 300_000, times),
            secs(5),
            "healthy a while: short"
        );
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
