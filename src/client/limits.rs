//! The timeouts that bound a linked client: idle_transaction_timeout, query_timeout and
//! transaction_timeout, as the one deadline a link waits for next.

use super::end::End;
use super::link::Link;
use crate::protocol::backend::TxStatus;
use std::time::{Duration, Instant};

pub(super) async fn sleep_until_or_never(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The timeouts that bound a link (None: off): a client idle in a transaction, a unit of
/// work without its whole answer (a server that stopped answering), a transaction open too
/// long.
pub(super) struct Limits {
    pub idle_transaction: Option<Duration>,
    pub query: Option<Duration>,
    pub transaction: Option<Duration>,
}

impl Limits {
    /// The first of them to run out from here, and how the session then ends.
    pub fn next(&self, link: &Link) -> Option<(Instant, End)> {
        // All off, as by default: asked before every wait of a link, so said at once.
        if self.idle_transaction.is_none() && self.query.is_none() && self.transaction.is_none() {
            return None;
        }
        let t = &link.ex.tracker;
        let idle_in_tx = t.status != TxStatus::Idle && !t.busy() && link.ex.to_server.is_empty();
        let idle = self
            .idle_transaction
            .filter(|_| idle_in_tx)
            .map(|d| (Instant::now() + d, End::IdleTransactionTimeout));
        let query = self
            .query
            .filter(|_| t.busy())
            .zip(link.unit_start)
            .map(|(d, start)| (start + d, End::QueryTimeout));
        let transaction = self
            .transaction
            .zip(link.xact_start)
            .map(|(d, start)| (start + d, End::TransactionTimeout));
        [idle, query, transaction]
            .into_iter()
            .flatten()
            .min_by_key(|(at, _)| *at)
    }
}
