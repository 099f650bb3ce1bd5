//! One node of a cluster (the primary or a replica): its address and weight, and its health
//! as one lock-free word the router reads on every decision (up, lagging, or banned until a
//! check passes, keeping what was known of the lag).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    pub role: Role,
    pub host: String,
    pub port: u16,
    pub weight: u32,
    /// `host:port`, as logs and metrics name the node.
    pub addr: String,
    /// A [`Health`], encoded.
    pub(super) health: AtomicU64,
    pub(super) lag_bytes: AtomicU64,
    pub(super) lag_ms: AtomicU64,
    /// Client links to this node right now (least_outstanding counts these).
    pub(super) outstanding: AtomicUsize,
}

impl Node {
    pub(super) fn new(role: Role, host: &str, port: u16, weight: u32) -> Node {
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
