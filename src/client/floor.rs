//! Read-your-writes on the client's side: the WAL position its reads must see (its floor),
//! learnt from the primary once its writing work is over, while the client already has its
//! ReadyForQuery; and a read's wait for a replica to replay up to it.

use super::end::End;
use super::link::{FloorDue, Link};
use super::session::Session;
use crate::cluster::Lsn;
use crate::config::ReadYourWrites;
use crate::pool::Members;
use crate::protocol::backend::TxStatus;
use crate::server::query::{self, QueryError};
use bytes::Buf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::AsyncWriteExt;

/// Where the client's commit ends at the latest: the WAL flushed so far, as a commit waits
/// for its flush; under synchronous_commit = off, where it does not, every record inserted
/// so far. (Not the insert position always: records of the server's own that nobody flushes
/// yet would keep every replica short of it for up to wal_writer_delay.)
pub(super) const POSITION: &str =
    "SELECT CASE WHEN pg_catalog.current_setting('synchronous_commit') = 'off' \
     THEN pg_catalog.pg_current_wal_insert_lsn() ELSE pg_catalog.pg_current_wal_flush_lsn() END";

impl Session<'_> {
    /// The floor of this client's reads: its own, and its pool's under read_your_writes =
    /// "pool".
    pub(super) fn floor(&self) -> Lsn {
        if self.unknown_floor {
            // Above every replica: the read goes to the primary.
            return Lsn(u64::MAX);
        }
        match self.config.general.read_your_writes {
            ReadYourWrites::Pool => self
                .floor
                .max(Lsn(self.members.floor.load(Ordering::SeqCst))),
            _ => self.floor,
        }
    }

    /// Work of this client's that may have written is over, by `lsn` on the primary.
    pub(super) fn wrote_by(&mut self, lsn: Lsn) {
        match self.config.general.read_your_writes {
            ReadYourWrites::Off => return,
            ReadYourWrites::Pool => {
                self.members.floor.fetch_max(lsn.0, Ordering::SeqCst);
            }
            ReadYourWrites::Connection => {}
        }
        self.floor = self.floor.max(lsn);
    }

    /// Asks the link's server, idle after work that may have written, for its WAL
    /// position, and raises the floor to it. What the client is owed goes to it meanwhile. An
    /// Err ends the session: the server did not answer.
    pub(super) async fn learn_floor(&mut self, link: &mut Link) -> Result<(), End> {
        if let FloorDue::Writes { owed, .. } = &mut link.floor {
            *owed = false;
        }
        // Under "pool", other clients' reads wait for this position from the moment this
        // client may see its ReadyForQuery (and tell the application it wrote).
        let pool = (self.config.general.read_your_writes == ReadYourWrites::Pool)
            .then(|| self.members.clone());
        let _pending = pool.as_deref().map(Pending::new);
        let timeout = self.config.general.server_connect_timeout.0;
        // A notification that reaches the server meanwhile is the client's, after its answer.
        let mut notes = bytes::BytesMut::new();
        let rows = {
            let ask = query::several(&mut link.ex.conn, POSITION, |_, _| {}, Some(&mut notes));
            tokio::pin!(ask);
            let late = tokio::time::sleep(timeout);
            tokio::pin!(late);
            let to_client = &mut self.to_client;
            loop {
                tokio::select! {
                    biased;
                    rows = &mut ask => break rows,
                    w = self.client.write(to_client), if !to_client.is_empty() => match w {
                        Ok(n) if n > 0 => to_client.advance(n),
                        _ => return Err(End::ClientGone),
                    },
                    _ = &mut late => return Err(End::ServerGone),
                }
            }
        };
        self.to_client.extend_from_slice(&notes);
        let rows = rows.and_then(|(rows, error)| error.map_or(Ok(rows), Err));
        let lsn = match rows {
            Ok(rows) => rows
                .first()
                .and_then(|r| r.first())
                .and_then(|v| v.as_deref())
                .and_then(Lsn::parse),
            Err(QueryError::Server { message, .. }) => {
                // A primary in recovery (promoted elsewhere, misconfigured) has no position
                // to give; the work was answered all the same.
                tracing::debug!(error = %message, "no WAL position for read_your_writes");
                None
            }
            Err(_) => return Err(End::ServerGone),
        };
        if let Some(lsn) = lsn {
            self.wrote_by(lsn);
        }
        Ok(())
    }

    /// Under read_your_writes = "pool", waits while another client's commit position is
    /// being learnt, up to read_your_writes_wait; a read that still cannot know the floor then
    /// goes to the primary.
    pub(super) async fn await_pool_floor(&mut self) {
        let members = &self.members;
        if self.config.general.read_your_writes != ReadYourWrites::Pool
            || members.floor_pending.load(Ordering::SeqCst) == 0
        {
            return;
        }
        let wait = async {
            loop {
                let learnt = members.floor_learnt.notified();
                tokio::pin!(learnt);
                learnt.as_mut().enable();
                if members.floor_pending.load(Ordering::SeqCst) == 0 {
                    return;
                }
                learnt.await;
            }
        };
        let since = *self.waiting.get_or_insert(Instant::now());
        let deadline = since + self.config.general.read_your_writes_wait.0;
        let deadline = tokio::time::Instant::from_std(deadline);
        if tokio::time::timeout_at(deadline, wait).await.is_err() {
            self.unknown_floor = true;
            self.waited = true;
        }
    }

    /// No usable replica has replayed this client's writes yet: wait for the next poll of
    /// their positions, within read_your_writes_wait of the first wait, after which the
    /// router places the read without waiting again.
    pub(super) async fn wait_for_replay(&mut self) {
        let now = Instant::now();
        let since = *self.waiting.get_or_insert(now);
        let deadline = since + self.config.general.read_your_writes_wait.0;
        let cluster = &self.members.cluster;
        if now >= deadline
            || !cluster
                .replay_polled(tokio::time::Instant::from_std(deadline))
                .await
        {
            self.waited = true;
        }
    }

    /// The read placed on `node` had waited for replay: how long, and where it went.
    pub(super) fn waited_for_replay(&mut self, node: usize) {
        if let Some(since) = self.waiting.take() {
            let waits = &self.members.floor_waits;
            let to = if node == self.members.cluster.primary() {
                &waits.to_primary
            } else {
                &waits.to_replica
            };
            to.observe(since.elapsed().as_secs_f64());
        }
    }
}

/// Position queries of a link still unanswered under read_your_writes = "pool", counted in
/// the (database, user) so that other clients' reads wait for them; uncounted when answered,
/// or when the link ends whatever way.
#[derive(Default)]
pub(super) struct PoolPending {
    members: Option<Arc<Members>>,
    count: usize,
}

impl PoolPending {
    pub fn add(&mut self, members: &Arc<Members>) {
        let m = self.members.get_or_insert_with(|| members.clone());
        m.floor_pending.fetch_add(1, Ordering::SeqCst);
        self.count += 1;
    }

    /// One was answered (its position, if any, already taken).
    pub fn done(&mut self) {
        if let (Some(m), true) = (&self.members, self.count > 0) {
            self.count -= 1;
            m.floor_pending.fetch_sub(1, Ordering::SeqCst);
            m.floor_learnt.notify_waiters();
        }
    }
}

impl Drop for PoolPending {
    fn drop(&mut self) {
        while self.count > 0 {
            self.done();
        }
    }
}

/// A commit position being learnt, counted in its (database, user) while it is.
struct Pending<'a>(&'a Members);

impl<'a> Pending<'a> {
    fn new(members: &'a Members) -> Pending<'a> {
        members.floor_pending.fetch_add(1, Ordering::SeqCst);
        Pending(members)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.floor_pending.fetch_sub(1, Ordering::SeqCst);
        self.0.floor_learnt.notify_waiters();
    }
}

/// The statements of one unit (a Query, or extended-protocol messages up to Sync), as far as
/// the position query behind it cares: whether the unit may end its transaction with a
/// commit, and whether it may start a COPY FROM STDIN (during which the server takes no
/// Query).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Unit {
    started: bool,
    /// Its first statement is BEGIN or START.
    begins: bool,
    /// A statement of it is COMMIT or END.
    commits: bool,
    copy: bool,
}

impl Unit {
    /// Notes one statement's text.
    pub fn statement(&mut self, sql: &[u8]) {
        let start = sql
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(sql.len());
        let rest = &sql[start..];
        let len = rest.iter().take_while(|b| b.is_ascii_alphabetic()).count();
        let word = &rest[..len];
        let is = |w: &[u8]| word.eq_ignore_ascii_case(w);
        if !self.started {
            self.started = true;
            self.begins = is(b"begin") || is(b"start");
        }
        self.commits |= is(b"commit") || is(b"end");
        self.copy |= sql.windows(4).any(|w| w.eq_ignore_ascii_case(b"copy"));
    }

    /// Whether the position query may go right behind the unit, sent with the transaction in
    /// `status`: it may commit (outside a transaction, anything but BEGIN or START; inside
    /// one, COMMIT or END), and it starts no COPY. Only then is the position worth asking at
    /// once; a guess that misses is caught once the server is idle.
    pub fn may_end(&self, status: TxStatus) -> bool {
        let commits = match status {
            TxStatus::Idle => !self.begins,
            _ => self.commits,
        };
        commits && !self.copy
    }

    /// The unit of one Query.
    pub fn of(sql: &[u8]) -> Unit {
        let mut u = Unit::default();
        u.statement(sql);
        u
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_position_is_asked_behind_work_that_may_commit() {
        let ends = |sql: &[u8], status| Unit::of(sql).may_end(status);
        assert!(ends(b"INSERT INTO t VALUES (1)", TxStatus::Idle));
        assert!(!ends(b"  BEGIN", TxStatus::Idle));
        assert!(!ends(b"start transaction", TxStatus::Idle));
        assert!(!ends(b"UPDATE t SET x = 1", TxStatus::InTransaction));
        assert!(ends(b"COMMIT", TxStatus::InTransaction));
        assert!(ends(b"end;", TxStatus::Failed));
        assert!(!ends(b"BEGIN; COPY t FROM STDIN", TxStatus::Idle));
        assert!(
            !ends(b"copy t from stdin", TxStatus::Idle),
            "no Query during COPY"
        );
        // Extended protocol: BEGIN and a statement in one batch, then COMMIT in the next.
        let mut batch = Unit::default();
        batch.statement(b"BEGIN");
        batch.statement(b"INSERT INTO t VALUES ($1)");
        assert!(!batch.may_end(TxStatus::Idle));
        let mut batch = Unit::default();
        batch.statement(b"COMMIT");
        assert!(batch.may_end(TxStatus::InTransaction));
    }
}
