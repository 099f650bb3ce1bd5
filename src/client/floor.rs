//! Read-your-writes on the client's side: the WAL position its reads must see (its floor),
//! learnt from the primary once its writing work is over, while the client already has its
//! ReadyForQuery; and a read's wait for a replica to replay up to it.

use super::end::End;
use super::link::{FloorDue, Link};
use super::session::Session;
use crate::cluster::Lsn;
use crate::config::ReadYourWrites;
use crate::server::query::{self, QueryError};
use bytes::Buf;
use std::sync::atomic::Ordering;
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
        link.floor = FloorDue::Writes { owed: false };
        // Under "pool", other clients' reads wait for this position from the moment this
        // client may see its ReadyForQuery (and tell the application it wrote).
        let pool = (self.config.general.read_your_writes == ReadYourWrites::Pool)
            .then(|| self.members.clone());
        let _pending = pool.as_deref().map(Pending::new);
        let timeout = self.config.general.server_connect_timeout.0;
        let ask = query::simple(&mut link.ex.conn, POSITION);
        tokio::pin!(ask);
        let late = tokio::time::sleep(timeout);
        tokio::pin!(late);
        let to_client = &mut self.to_client;
        let rows = loop {
            tokio::select! {
                biased;
                rows = &mut ask => break rows,
                w = self.client.write(to_client), if !to_client.is_empty() => match w {
                    Ok(n) if n > 0 => to_client.advance(n),
                    _ => return Err(End::ClientGone),
                },
                _ = &mut late => return Err(End::ServerGone),
            }
        };
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
            let to = if node == 0 {
                &waits.to_primary
            } else {
                &waits.to_replica
            };
            to.observe(since.elapsed().as_secs_f64());
        }
    }
}

/// A commit position being learnt, counted in its (database, user) while it is.
struct Pending<'a>(&'a crate::pool::Members);

impl<'a> Pending<'a> {
    fn new(members: &'a crate::pool::Members) -> Pending<'a> {
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

/// Whether the position query may go right behind this Query: not when it may start a COPY
/// FROM STDIN, during which the server takes no Query.
pub(super) fn may_follow(sql: &[u8]) -> bool {
    !sql.windows(4).any(|w| w.eq_ignore_ascii_case(b"copy"))
}
