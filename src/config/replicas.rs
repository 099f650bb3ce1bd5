//! A database's replicas as the file writes them (`"host:port"` or a table with a weight),
//! and the choices of how its nodes get their roles and share its reads.

use super::default_port;
use serde::{Deserialize, Serialize};

/// How the nodes of a database get their roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Roles {
    /// `host` is the primary, `replicas` are replicas.
    #[default]
    Primary,
    /// `host` and `replicas` are all candidates: the one that is not in recovery
    /// (`pg_is_in_recovery()`) is the primary, so a promotion is followed.
    Auto,
}

/// One entry of `replicas`: `"host:port"`, or a table with a weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReplicaSpec {
    Addr(String),
    Table(ReplicaTable),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaTable {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// A replica as the rest of the program sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub host: String,
    pub port: u16,
    pub weight: u32,
}

impl ReplicaSpec {
    pub fn resolve(&self) -> Result<Replica, String> {
        match self {
            ReplicaSpec::Table(t) => Ok(Replica {
                host: t.host.clone(),
                port: t.port,
                weight: t.weight,
            }),
            ReplicaSpec::Addr(a) => {
                let bad = || format!("\"{a}\" is not host:port");
                let (host, port) = a.rsplit_once(':').ok_or_else(bad)?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                if host.is_empty() {
                    return Err(bad());
                }
                Ok(Replica {
                    host: host.to_owned(),
                    port: port.parse().map_err(|_| bad())?,
                    weight: 1,
                })
            }
        }
    }
}

/// Whether the primary serves reads too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadFromPrimary {
    /// Reads go to replicas only; when none is usable, a read fails rather than load the
    /// primary (a database without replicas still reads from its primary).
    Never,
    /// Reads go to the primary only when no replica is usable.
    #[default]
    Fallback,
    /// The primary is one more member of the read rotation.
    Always,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalance {
    #[default]
    RoundRobin,
    LeastOutstanding,
    Random,
}
