//! Linking a client to a server: the router decides where the client's next unit of work
//! runs, the pool hands out a server there (the client may leave while it waits), and the
//! server is brought to the client's session parameters. After a failure the router allows
//! to be retried, the unit is put back and placed again elsewhere.

use super::end::End;
use super::idle::client_gone;
use super::params::Misaligned;
use super::session::Session;
use crate::cluster::InFlight;
use crate::config::{PoolMode, ReadYourWrites};
use crate::pool::{Checkout, PoolError};
use crate::protocol::backend::{self, TxStatus};
use crate::protocol::frontend::Message;
use crate::protocol::sqlstate;
use crate::router::effects::Effects;
use crate::router::policy::{self, Failure, Flow, Retry, Unplaced};
use crate::router::work::Work;
use crate::server::exchange::Exchange;
use bytes::BytesMut;
use std::sync::Arc;
use std::time::Instant;

/// PostgreSQL's text for a cancelled statement.
const CANCELLED: &str = "canceling statement due to user request";

/// A server checked out by this client, and how the client's work reaches it.
pub(super) struct Link {
    pub ex: Exchange,
    /// The node the server belongs to.
    pub node: usize,
    /// Counts the link as in flight at its node while it lives (least_outstanding).
    _at: Option<InFlight>,
    pub pace: Pace,
    /// The client's messages sent while the unit is held, to send again elsewhere.
    pub replay: BytesMut,
    /// When the unit of work now running, and the transaction it belongs to, started.
    pub unit_start: Option<Instant>,
    pub xact_start: Option<Instant>,
    /// When the last unit was answered: the time the server goes back to the pool at.
    pub answered: Option<Instant>,
    /// What the client's work on this link may have done to its session since the last
    /// probe (`client::probe`).
    pub touched: Effects,
    /// The error a refused Parse's stand-in will be answered with, until it is.
    pub refusal: Option<&'static [u8]>,
    /// What the link owes the client's floor (read_your_writes).
    pub floor: FloorDue,
    /// Statements the pooler is describing on this server.
    pub describing: super::rewrite::Describing,
    /// Whether a client's Bind waits for its statement to be described here first.
    pub verify: Verify,
    /// Its position queries other clients' reads wait for (read_your_writes = "pool").
    pub pool_pending: super::floor::PoolPending,
    /// Whose sequence values the server's session holds.
    pub sequences: SequenceValues,
}

/// Whose values a server's currval and lastval answer with, as far as the client's next
/// statement is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SequenceValues {
    /// The client's own: the server has served no one else since the client last used it
    /// (or it is the client's for the session), or the client has called nextval on it in
    /// this link.
    Own,
    /// Maybe another client's: a currval or lastval is refused (`sequences::judge`).
    Foreign,
}

/// A Bind held back while its statement is prepared and described on the server
/// (`rewrite::Rewritten::Hold`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verify {
    No,
    /// No frame of the client's is taken until the description arrives.
    Waiting,
    /// The Parse failed instead: the server skips the client's batch up to its Sync, which
    /// must be taken however busy the server looks.
    Failed,
}

/// Whether a link must learn the primary's WAL position for its client's floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FloorDue {
    /// Its work writes nothing a replica read must wait for.
    Never,
    /// Its work may write: each time the client sends more, the position is owed again.
    /// `unit` is what the extended-protocol unit being sent holds so far.
    Writes {
        owed: bool,
        unit: super::floor::Unit,
    },
}

/// How the link takes the client's work: the router's `Flow`, and for a retryable unit
/// whether its answer is still held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pace {
    /// Everything the client sends goes through.
    Stream,
    /// One unit at a time.
    OneUnit,
    /// One unit whose answer is held back: nothing goes to the client from `mark` on, and
    /// what the client sends is kept in `replay`, until the unit is answered (or answers at
    /// length). A failure before then runs it again elsewhere.
    Held { mark: usize },
}

impl Pace {
    pub fn one_unit(self) -> bool {
        self != Pace::Stream
    }

    pub fn held(self) -> bool {
        matches!(self, Pace::Held { .. })
    }
}

/// What a wait for a server ended with, the client still there.
enum Waited {
    Server(Checkout),
    Failed(PoolError),
    /// The client cancelled its work while it waited.
    Cancelled,
}

impl Session<'_> {
    /// Decides where the client's next work runs, checks out a server there and brings its
    /// session parameters in line with this client's. None when the work was answered with
    /// an error instead (no node may take it).
    pub(super) async fn link(&mut self) -> Result<Option<Box<Link>>, End> {
        if !Arc::ptr_eq(&self.ctx.config.load(), &self.config) {
            self.config = self.ctx.config.load_full();
        }
        // A cancel that came while the client held no server, before this unit, was meant
        // for work already answered; PostgreSQL drops one that reaches an idle backend too.
        // One that came while this unit was being placed again (a retry) is for it.
        if self.retries == 0 {
            self.reg.slot.take_cancel();
        }
        // One clock read for the whole checkout (query_wait_timeout counts from it).
        let mut since = std::time::Instant::now();
        self.reg.slot.last_request.store(
            crate::stats::unix_micros_at(since),
            std::sync::atomic::Ordering::Relaxed,
        );
        if self.members.cluster.is_paused() {
            self.wait_resumed().await?;
            since = std::time::Instant::now();
        }
        // The cluster is borrowed afresh where it is needed, never cloned: a refcount shared
        // by every client of the database would cost a cache line bouncing between cores on
        // every transaction.
        self.await_pool_floor().await;
        let (decision, ex, previous) = loop {
            let facts = self.facts();
            let work = || {
                let catalog = &*self.catalog;
                let wf = catalog.functions();
                let statement = |name: &[u8]| self.statements.get(name).map(|s| s.class(&wf));
                Work::of(self.inbox.messages(), statement, catalog)
            };
            let cluster = &*self.members.cluster;
            let decision = match policy::decide(cluster, &self.routes, &facts, work) {
                Ok(d) => d,
                Err(Unplaced::Behind) => {
                    self.wait_for_replay().await;
                    continue;
                }
                Err(e) => {
                    self.reject_unit(sqlstate::CONNECTION_FAILURE, &e.to_string());
                    return Ok(None);
                }
            };
            let node = decision.node;
            let was_primary = node == self.members.cluster.primary();
            let checkout = match self.checkout(node, since).await? {
                Waited::Server(c) => c,
                Waited::Cancelled => {
                    self.reject_unit(sqlstate::QUERY_CANCELED, CANCELLED);
                    return Ok(None);
                }
                Waited::Failed(e) => {
                    let connect = matches!(e, PoolError::Connect(_));
                    let recovering = connect && self.members.pools[node].login_recovering(since);
                    let failure = Failure::Checkout {
                        connect,
                        recovering,
                        was_primary,
                    };
                    if !self.place_again(&facts, node, failure, &e) {
                        return Err(End::NoServer(e));
                    }
                    continue;
                }
            };
            let previous = checkout.previous;
            let mut ex = self.exchange(checkout.conn);
            // The client's cancels reach the server only once its own work goes there: one
            // that met the pooler's statements bringing the server in line would fail those
            // instead.
            let timeout = self.config.general.server_connect_timeout.0;
            let Err(misaligned) = self.params.bring_in_line(&mut ex, timeout).await else {
                break (decision, ex, previous);
            };
            let reusable = ex.tracker.idle();
            self.members.pools[node].release(ex.conn, reusable);
            // None of the client's work has gone to that server: where the server was lost,
            // not refusing the client's settings, the work is placed again like any other.
            let failure = match &misaligned {
                Misaligned::Lost => Some(Failure::Lost),
                Misaligned::Refused { code, .. } => {
                    policy::retryable_error(code.as_bytes()).map(Failure::Error)
                }
            };
            match failure {
                Some(f) if self.place_again(&facts, node, f, &misaligned) => {}
                Some(_) => return Err(End::ServerGone),
                None => return Err(End::Params(misaligned.to_string())),
            }
        };
        let node = decision.node;
        let sequences = if self.mode == PoolMode::Session
            || node != self.members.cluster.primary()
            || (previous != 0 && previous == self.sequence_home)
        {
            // A replica's sessions have no sequence values of their own (nextval is a write):
            // its answer is PostgreSQL's own error.
            SequenceValues::Own
        } else {
            SequenceValues::Foreign
        };
        if node == self.members.cluster.primary() {
            // Known again only once this link ends as it should, with the values the
            // client's own (`Session::release`).
            self.sequence_home = 0;
        }
        self.waited_for_replay(node);
        self.statements.new_link();
        let floor = if decision.writes
            && self.mode == PoolMode::Transaction
            && self.config.general.read_your_writes != ReadYourWrites::Off
        {
            FloorDue::Writes {
                owed: false,
                unit: super::floor::Unit::default(),
            }
        } else {
            FloorDue::Never
        };
        let replay = match self.spare.as_deref_mut() {
            Some(s) => std::mem::take(&mut s.replay),
            None => Default::default(),
        };
        let link = Box::new(Link {
            ex,
            // Links in flight matter only where there is a choice of node.
            _at: (self.members.cluster.has_replicas()).then(|| self.members.cluster.link(node)),
            node,
            pace: match decision.flow {
                Flow::Stream => Pace::Stream,
                Flow::OneUnit => Pace::OneUnit,
                Flow::Retryable => Pace::Held {
                    mark: self.to_client.len(),
                },
            },
            replay,
            unit_start: None,
            answered: None,
            xact_start: None,
            touched: Effects::default(),
            refusal: None,
            floor,
            describing: Default::default(),
            verify: Verify::No,
            pool_pending: Default::default(),
            sequences,
        });
        self.reg.slot.set(Some(link.ex.conn.cancel_key.clone()));
        if self.reg.slot.take_cancel() {
            self.reg.slot.set(None);
            let reusable = link.ex.tracker.idle();
            self.members.pools[node].release(link.ex.conn, reusable);
            self.reject_unit(sqlstate::QUERY_CANCELED, CANCELLED);
            return Ok(None);
        }
        Ok(Some(link))
    }

    /// PAUSE: the client waits, in line, until RESUME; leaving meanwhile is fine.
    async fn wait_resumed(&self) -> Result<(), End> {
        let cluster = &self.members.cluster;
        let _paused = self.members.paused();
        tokio::select! {
            _ = cluster.wait_resumed() => {}
            gone = client_gone(self.client) => {
                if gone {
                    return Err(End::LeftPaused);
                }
                cluster.wait_resumed().await;
            }
        }
        Ok(())
    }

    /// Waits for a server of `node`'s pool; a client that leaves or cancels its work
    /// meanwhile gives up its place.
    async fn checkout(&self, node: usize, since: std::time::Instant) -> Result<Waited, End> {
        let pool = &self.members.pools[node];
        let waiting = pool.checkout_for(Some(self.params.fingerprint()), since);
        tokio::pin!(waiting);
        let mut watch_client = true;
        let checkout = loop {
            tokio::select! {
                // Checkout first: when a server is free there is no need to look at the client.
                biased;
                r = &mut waiting => break r,
                gone = client_gone(self.client), if watch_client => {
                    if gone {
                        return Err(End::LeftWaiting);
                    }
                    // More work behind this unit: the client stays.
                    watch_client = false;
                }
                // A cancel, a KILL or a shutdown: only a cancel ends the wait here.
                _ = self.reg.slot.wake.notified() => {
                    if self.reg.slot.take_cancel() {
                        return Ok(Waited::Cancelled);
                    }
                }
            }
        };
        Ok(match checkout {
            Ok(c) => Waited::Server(c),
            Err(e) => Waited::Failed(e),
        })
    }

    /// Answers the client's next unit of work with an error instead of running it.
    fn reject_unit(&mut self, code: &str, message: &str) {
        while let Some(frame) = self.inbox.front() {
            let tag = frame.tag;
            self.inbox.pop();
            if matches!(tag, b'Q' | b'S') {
                break;
            }
        }
        backend::error_response(&mut self.to_client, "ERROR", code, message);
        backend::ready_for_query(&mut self.to_client, TxStatus::Idle);
    }

    /// The link failed before any of its answer reached the client, and the router says the
    /// work runs again elsewhere: forget what the server sent, put the client's messages
    /// back, and let the next link place them.
    pub(super) fn retry_elsewhere(&mut self, link: Link, retry: Retry) {
        let node = link.node;
        tracing::info!(db = %self.members.cluster.database, node = %self.members.cluster.nodes[node].addr, reason = retry.why, "retrying a read on another node");
        // A cancel sent to that server for this work may have reached it too late to act,
        // or not at all (a restarting replica): it holds for the work placed again, which
        // is then answered as cancelled instead of running in full elsewhere.
        if link.ex.conn.cancel_key.cancelling() {
            self.reg.slot.keep_cancel();
        }
        self.members.pools[node].release(link.ex.conn, false);
        if let Pace::Held { mark } = link.pace {
            self.to_client.truncate(mark);
            let max = self.config.general.max_packet_size;
            self.inbox.put_back(link.replay, max);
            if retry.wrote {
                self.remember_write();
            }
        }
        self.failed_on(node, retry);
    }

    /// The unit at the front of the inbox was refused by a replica as a write: its texts and
    /// named statements go to the primary from now on, for every client of the database.
    fn remember_write(&mut self) {
        for msg in self.inbox.messages() {
            match msg {
                Message::Query(sql) => {
                    self.catalog.remember_write(sql);
                    break;
                }
                Message::Parse { query, .. } => self.catalog.remember_write(query),
                Message::Bind { statement, .. } if !statement.is_empty() => {
                    if let Some(s) = self.statements.get(statement) {
                        s.mark_wrote();
                    }
                }
                Message::Sync => break,
                _ => {}
            }
        }
    }

    /// An exchange with a checked-out server, in the buffers the client's last link left.
    fn exchange(&mut self, conn: Box<crate::server::ServerConn>) -> Exchange {
        let (tracker, to_server) = match self.spare.as_deref_mut() {
            Some(s) => (
                std::mem::take(&mut s.tracker),
                std::mem::take(&mut s.to_server),
            ),
            None => Default::default(),
        };
        Exchange::new(conn, tracker, to_server)
    }

    /// Work failed on `node` before any of it ran there (`error` says how): true when the
    /// router places it again, the node banned or avoided as it says.
    fn place_again(
        &mut self,
        facts: &policy::Session,
        node: usize,
        failure: Failure,
        error: &dyn std::fmt::Display,
    ) -> bool {
        let cluster = &*self.members.cluster;
        let Some(retry) = policy::retry(cluster, &self.routes, facts, node, failure) else {
            return false;
        };
        tracing::warn!(db = %cluster.database, node = %cluster.nodes[node].addr, %error, reason = retry.why, "placing the work again");
        self.failed_on(node, retry);
        true
    }

    /// Work failed on `node`: ban it if the router says so, and avoid it next time.
    fn failed_on(&mut self, node: usize, retry: Retry) {
        if retry.ban {
            self.ban(node, retry.why);
        }
        self.avoid = Some(node);
        self.retries += 1;
        self.wrote |= retry.wrote;
    }
}
