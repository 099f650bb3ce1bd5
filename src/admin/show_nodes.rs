//! SHOW NODES: each database's primary and replicas with their role, health, ban, lag and
//! client links in flight.

use super::{Cell, Kind, Table};
use crate::cluster::{Reachability, Role, Usable};
use crate::context::Context;

pub fn table(ctx: &Context) -> Table {
    use Kind::*;
    let mut t = Table::new(&[
        ("database", Text),
        ("node", Text),
        ("role", Text),
        ("health", Text),
        ("in_flight", Int),
        ("lag_bytes", Int),
        ("lag_us", Int),
        ("weight", Int),
    ]);
    let members = ctx.pools.all_members();
    for cluster in ctx.clusters.all() {
        for (i, node) in cluster.nodes.iter().enumerate() {
            // Servers linked to a client right now, over every user's pool of this node.
            let in_flight: usize = members
                .iter()
                .filter(|m| std::sync::Arc::ptr_eq(&m.cluster, &cluster))
                .filter_map(|m| m.pools.get(i))
                .map(|p| p.stats().active)
                .sum();
            let role = cluster.role(i);
            let health = match (role, node.usable()) {
                (Role::Primary, _) if cluster.primary_reachable() == Reachability::Unreachable => {
                    "unreachable"
                }
                (_, Usable::Yes) => "up",
                (_, Usable::Banned) => "banned",
                (_, Usable::Lagging) => "lagging",
            };
            let (bytes, time) = node.lag();
            t.row(vec![
                Cell::from(&cluster.database),
                Cell::from(&node.addr),
                Cell::from(match role {
                    Role::Primary => "primary",
                    Role::Replica => "replica",
                }),
                Cell::from(health),
                Cell::from(in_flight),
                Cell::from(bytes),
                Cell::from(time.as_micros() as u64),
                Cell::from(node.weight),
            ]);
        }
    }
    t
}
