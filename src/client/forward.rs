//! The forwarding pump of a linked client: the client's frames go to the server (statement
//! names rewritten), the server's replies stream back without buffering whole results, until
//! the link must end. Which way it ends is an [`Unlink`]; the session acts on it.

use super::end::End;
use super::floor;
use super::limits::{sleep_until_or_never, Limits};
use super::link::{FloorDue, Link, Pace, SequenceValues, Verify};
use super::listen::next_note;
use super::params::SessionParams;
use super::refusal::{foreign_sequences, foreign_sequences_error, refusal};
use super::rewrite::{self, ClientStatements, Describing, Names, Rewritten, Target};
use super::sequences::{self, Verdict};
use super::session::Session;
use crate::cluster::Cluster;
use crate::cluster::Lsn;
use crate::config::{PoolMode, ReadYourWrites};
use crate::context::Phase;
use crate::protocol::backend::{Action, TxStatus};
use crate::protocol::frontend::{self, Message};
use crate::protocol::sqlstate;
use crate::protocol::ProtocolError;
use crate::router::effects;
use crate::router::policy::{self, Failure, Retry};
use crate::router::RouteCounters;
use crate::server::exchange::{Replies, READ_CHUNK};
use crate::server::tracker::Reply;
use bytes::Buf;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Stop reading from one side while this much is waiting to be written to the other.
const HIGH_WATER: usize = 256 * 1024;
/// How much of a retryable read's answer may be held back before it goes to the client
/// (and can no longer be retried).
const HOLD_LIMIT: usize = 32 * 1024;

/// How a linked stretch ended.
pub(super) enum Unlink {
    /// Transaction mode: the server owes nothing and is idle.
    Release,
    /// The node failed before any of the answer reached the client: run the work elsewhere.
    Retry(Retry),
    /// The session ends.
    End(End),
}

/// Where the pump is with the client's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// Nothing of the client's has gone to the server yet on this link.
    Fresh,
    Forwarded,
    /// The client sent Terminate: answer what came before it, then end.
    Terminating,
}

/// Hears what the pump must know of the server's replies: the parameters it reports (the
/// client's, if tracked) and, while the answer is held, an error the router lets the unit be
/// retried after elsewhere.
struct Listening<'a> {
    params: &'a mut SessionParams,
    /// What replaces the error of a refused Parse's stand-in.
    refusal: &'a mut Option<&'static [u8]>,
    /// Set while the answer is held back.
    held: Option<Placing<'a>>,
    retry: Option<Retry>,
    /// The answer to the position query behind the client's: the value read, the highest
    /// position of a finished transaction, and whether one ended inside a transaction (the
    /// position is owed again).
    own_value: Option<Lsn>,
    learnt: Option<Lsn>,
    owed: bool,
    /// Position queries answered.
    answered: usize,
    /// What the pooler is describing on the server, and the client's statements.
    describing: &'a mut Describing,
    statements: &'a mut ClientStatements,
    /// A description, or an error, arrived.
    described_any: bool,
    error_seen: bool,
}

/// What the router needs to decide a retry.
struct Placing<'a> {
    cluster: &'a Cluster,
    routes: &'a RouteCounters,
    facts: policy::Session,
    node: usize,
}

impl Replies for Listening<'_> {
    fn parameter(&mut self, name: &str, value: &str) {
        self.params.reported(name, value);
    }

    fn own_value(&mut self, value: Option<&[u8]>) {
        self.own_value = value
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(Lsn::parse);
    }

    fn described(&mut self, statement: u64, shape: u64) {
        rewrite::described(self.describing, self.statements, statement, shape);
        self.described_any = true;
    }

    fn own_answered(&mut self, status: TxStatus) {
        self.answered += 1;
        let value = self.own_value.take();
        if status == TxStatus::Idle {
            self.learnt = self.learnt.max(value);
        } else {
            self.owed = true;
        }
    }

    fn error(&mut self, code: &[u8], _message: &[u8]) -> Action {
        self.error_seen = true;
        if code == sqlstate::FEATURE_NOT_SUPPORTED.as_bytes() {
            // The stand-in for a refused statement failed as it must: the client gets why.
            if let Some(bytes) = self.refusal.take() {
                return Action::Replace(bytes);
            }
        }
        let Some(p) = &self.held else {
            return Action::Forward;
        };
        if self.retry.is_some() {
            // The answer is thrown away already.
            return Action::Drop;
        }
        let Some(error) = policy::retryable_error(code) else {
            return Action::Forward;
        };
        // Not the client's to see if the work runs again elsewhere.
        self.retry = policy::retry(p.cluster, p.routes, &p.facts, p.node, Failure::Error(error));
        if self.retry.is_some() {
            Action::Drop
        } else {
            Action::Forward
        }
    }
}

impl Session<'_> {
    /// Moves every whole client frame into the server's output, mapping named prepared
    /// statements to the pooler's. True once Terminate is taken.
    fn take_client_frames(&mut self, link: &mut Link) -> Result<bool, ProtocolError> {
        let capacity = self.config.general.max_prepared_statements;
        let refuse_pins =
            !self.config.general.pin_session_features && self.mode == PoolMode::Transaction;
        self.inbox.scan(self.config.general.max_packet_size);
        let metrics = &self.members.pools[link.node].metrics;
        let mut names = Names {
            statements: &mut self.statements,
            registry: &self.ctx.statements,
            metrics,
            capacity,
        };
        let mut taken = 0;
        let pool_floor = self.config.general.read_your_writes == ReadYourWrites::Pool;
        if link.verify == Verify::Failed {
            link.verify = Verify::No;
        }
        let terminated = loop {
            let Some(frame) = self.inbox.front() else {
                if let Some(e) = self.inbox.fault() {
                    return Err(e);
                }
                break false;
            };
            let (tag, original) = (frame.tag, frame.bytes);
            let replay_mark = link.replay.len();
            if link.pace.held() {
                link.replay.extend_from_slice(original);
            }
            // Most statements do nothing to the session: they cost one cheap test. The text
            // is what the sequence check reads (a Bind's statement looked up once).
            let (fx, text) = match frame.msg {
                Message::Query(sql) | Message::Parse { query: sql, .. } => (
                    effects::may_affect(sql).then(|| effects::of(sql)),
                    Some(sql),
                ),
                Message::Bind { statement, .. } if !statement.is_empty() => {
                    match names.statements.get(statement) {
                        Some(s) => {
                            let fx = s.effects();
                            let used = !fx.is_empty() || fx.sequences != Default::default();
                            (used.then(|| fx.clone()), Some(s.text()))
                        }
                        None => (None, None),
                    }
                }
                _ => (None, None),
            };
            let verdict = match text {
                Some(text) if link.sequences == SequenceValues::Foreign => {
                    sequences::judge(&mut link.sequences, frame.msg, text, fx.as_ref())
                }
                _ => Verdict::Pass,
            };
            let refuse_bind = verdict == Verdict::Refuse && tag == b'B';
            let refused = if verdict == Verdict::Refuse {
                foreign_sequences(frame.msg)
            } else {
                fx.as_ref()
                    .filter(|fx| !fx.start.is_empty() && refuse_pins)
                    .and_then(|fx| refusal(frame.msg, fx.start))
            };
            let (msg, bytes) = match &refused {
                Some(r) => {
                    link.refusal = Some(r.error);
                    (r.message(), &r.frame[..])
                }
                None => {
                    if let Some(fx) = fx.filter(|fx| !fx.is_empty()) {
                        if fx.reset_all && self.notes.take().is_some() {
                            // DISCARD ALL unlistens as well.
                            self.members.listener.unlisten(self.reg.process_id, None);
                        }
                        link.touched.merge(&fx);
                    }
                    (frame.msg, original)
                }
            };
            let to = Target {
                ex: &mut link.ex,
                describing: &mut link.describing,
                refusal: &mut link.refusal,
            };
            let rewritten = if refuse_bind {
                names.refuse_bind(to, foreign_sequences_error());
                Rewritten::Sent
            } else if capacity > 0 {
                names.rewrite(msg, bytes, to)
            } else {
                Rewritten::AsIs
            };
            if rewritten == Rewritten::Hold {
                // Taken again once the server has answered.
                link.replay.truncate(replay_mark);
                link.verify = Verify::Waiting;
                break false;
            }
            let ex = &mut link.ex;
            match msg {
                Message::Terminate => {
                    self.inbox.pop();
                    break true;
                }
                _ if rewritten == Rewritten::Sent => {}
                Message::Parse { .. } => {
                    ex.tracker.parse_sent(None, Reply::Forward);
                    ex.to_server.extend_from_slice(bytes);
                }
                Message::Close { .. } => {
                    ex.tracker.close_sent(Reply::Forward);
                    ex.to_server.extend_from_slice(bytes);
                }
                Message::Sync => {
                    ex.conn.prepared.new_batch();
                    ex.to_server.extend_from_slice(bytes);
                }
                _ => ex.to_server.extend_from_slice(bytes),
            }
            taken += original.len();
            ex.tracker.sent(tag);
            if let FloorDue::Writes { owed, unit } = &mut link.floor {
                // Behind a unit that may end its transaction, the position is asked for at
                // once (its answer comes with the client's); otherwise once the server is idle
                // (`learn_floor`), also after work whose session state is probed first,
                // before the client hears back.
                let status = ex.tracker.status;
                let ended = match msg {
                    Message::Query(sql) => Some(floor::Unit::of(sql)),
                    Message::Sync => Some(std::mem::take(unit)),
                    Message::Parse { query, .. } => {
                        unit.statement(query);
                        None
                    }
                    Message::Bind { statement, .. } => {
                        if let Some(s) = names.statements.get(statement) {
                            unit.statement(s.text());
                        }
                        None
                    }
                    _ => None,
                };
                *owed = match ended {
                    Some(u)
                        if link.touched.is_empty()
                            && u.may_end(status)
                            && !ex.tracker.in_copy_in() =>
                    {
                        frontend::encode_query(&mut ex.to_server, floor::POSITION);
                        ex.tracker.own_sent();
                        if pool_floor {
                            // Counted before the client can see its ReadyForQuery.
                            link.pool_pending.add(&self.members);
                        }
                        false
                    }
                    _ => true,
                };
            }
            drop(refused);
            self.inbox.pop();
            if matches!(tag, b'Q' | b'E') {
                metrics.queries.inc();
            }
            if link.pace.one_unit() && matches!(tag, b'Q' | b'S') {
                break false;
            }
        };
        if taken > 0 {
            metrics.bytes_received.inc_by(taken as u64);
        }
        Ok(terminated)
    }

    /// Forwards both ways until the link must end.
    pub(super) async fn pump(&mut self, link: &mut Link) -> Unlink {
        let mut progress = Progress::Fresh;
        let g = &self.config.general;
        let limits = Limits {
            idle_transaction: g.idle_transaction_timeout.enabled(),
            query: g.query_timeout.enabled(),
            transaction: g.transaction_timeout.enabled(),
        };
        loop {
            // What the work did to the session is learnt before the client's next work goes
            // to the server, and before anyone else may have it.
            if progress == Progress::Forwarded
                && !link.touched.is_empty()
                && link.ex.settled()
                && !link.ex.tracker.busy()
                && !link.ex.tracker.unsynced()
            {
                if let Err(end) = self.settle(link).await {
                    return Unlink::End(end);
                }
            }
            // Its writes' position, before the client's next work is placed (read_your_writes).
            if progress == Progress::Forwarded
                && matches!(link.floor, FloorDue::Writes { owed: true, .. })
                && link.ex.settled()
                && link.ex.tracker.idle()
            {
                if let Err(end) = self.learn_floor(link).await {
                    return Unlink::End(end);
                }
            }
            // Release before taking the client's next transaction, so that clients waiting
            // for a server get their turn even against a client that never pauses. A pinned
            // client keeps its server.
            if progress == Progress::Forwarded
                && link.ex.settled()
                && self.mode == PoolMode::Transaction
                && link.ex.tracker.idle()
                && self.pinned.is_empty()
            {
                return Unlink::Release;
            }
            // What the server answered goes out now, not on the next wait: only here, once
            // what the work did is learnt above (`settle`, `learn_floor`), as the client must
            // not see its work end before.
            if !link.pace.held() {
                self.client.send_now(&mut self.to_client);
            }
            // One unit at a time: the next is taken once this one is answered. And once the
            // client's work is all answered, the position query behind it is waited for: the
            // next work is then placed afresh (and knows its floor), or answered by the pooler.
            let unit_pending = match link.verify {
                Verify::Waiting => true,
                Verify::Failed => false,
                Verify::No => {
                    (link.pace.one_unit() && link.ex.tracker.busy()) || link.ex.tracker.owns_next()
                }
            };
            if progress != Progress::Terminating && !unit_pending {
                let before = link.ex.to_server.len();
                let was_busy = link.ex.tracker.busy();
                match self.take_client_frames(link) {
                    Ok(true) => progress = Progress::Terminating,
                    Ok(false) => {}
                    Err(e) => return Unlink::End(End::Violation(e)),
                }
                if progress == Progress::Fresh && link.ex.to_server.len() > before {
                    progress = Progress::Forwarded;
                }
                link.ex.conn.stream.send_now(&mut link.ex.to_server);
                // (A statement described before the client's Bind is not the client's work.)
                if !was_busy && link.ex.tracker.busy() && link.verify != Verify::Waiting {
                    let now = Instant::now();
                    link.unit_start = Some(now);
                    link.xact_start.get_or_insert(now);
                }
            }
            let settled = link.ex.settled();
            let terminating = progress == Progress::Terminating;
            if settled && terminating && !link.ex.tracker.busy() {
                let _ = self.client.write_all(&self.to_client).await;
                self.to_client.clear();
                return Unlink::End(End::Terminated);
            }
            let phase = self.ctx.phase();
            let between = link.ex.tracker.idle() && settled && !terminating;
            let killed = self
                .reg
                .slot
                .killed
                .load(std::sync::atomic::Ordering::Relaxed);
            if killed || phase == Phase::Closing || (phase == Phase::Draining && between) {
                return Unlink::End(End::Shutdown);
            }
            let deadline = limits.next(link);
            if let Some(how) = self.step(link, terminating, deadline).await {
                return how;
            }
        }
    }

    /// One wait for whichever side is ready: writes to the server, to the client (unless the
    /// answer is held), reads from either. Some when the link must end.
    async fn step(
        &mut self,
        link: &mut Link,
        terminating: bool,
        deadline: Option<(Instant, End)>,
    ) -> Option<Unlink> {
        let held = link.pace.held();
        let between = link.ex.tracker.idle() && link.ex.settled();
        let pool = &self.members.pools[link.node];
        let conn = &mut link.ex.conn;
        let (mut srv_r, mut srv_w) = conn.stream.split();
        let (mut cli_r, mut cli_w) = self.client.split();
        let cbuf = &mut self.inbox.buf;
        if cbuf.capacity() - cbuf.len() < 1024 {
            cbuf.reserve(READ_CHUNK);
        }
        if conn.buf.capacity() - conn.buf.len() < 1024 {
            conn.buf.reserve(READ_CHUNK);
        }
        let to_server = &mut link.ex.to_server;
        let server_failed = tokio::select! {
            biased;
            r = srv_w.write(to_server), if !to_server.is_empty() => match r {
                Ok(n) if n > 0 => {
                    to_server.advance(n);
                    return None;
                }
                _ => true,
            },
            // Held back while the work may still be retried elsewhere.
            r = cli_w.write(&self.to_client), if !self.to_client.is_empty() && !held => match r {
                Ok(n) if n > 0 => {
                    self.to_client.advance(n);
                    return None;
                }
                _ => return Some(Unlink::End(End::ClientGone)),
            },
            r = srv_r.read_buf(&mut conn.buf), if self.to_client.len() < HIGH_WATER => match r {
                Ok(n) if n > 0 => {
                    pool.metrics.bytes_sent.inc_by(n as u64);
                    false
                }
                _ => true,
            },
            r = cli_r.read_buf(cbuf), if !terminating && to_server.len() < HIGH_WATER => match r {
                Ok(n) if n > 0 => return None,
                _ => return Some(Unlink::End(End::ClientGone)),
            },
            _ = sleep_until_or_never(deadline.as_ref().map(|d| d.0)) => {
                let why = deadline.map_or(End::IdleTransactionTimeout, |d| d.1);
                return Some(Unlink::End(why))
            }
            // Between transactions, as PostgreSQL delivers them.
            note = next_note(&mut self.notes), if between => {
                self.to_client.extend_from_slice(&note);
                return None;
            }
            // Woken to look at the phase again at the top of the loop.
            _ = self.reg.slot.wake.notified() => return None,
        };
        if server_failed {
            return Some(self.lost(link));
        }
        self.take_in(link)
    }

    /// The server's connection broke: a held unit may run again elsewhere if the router
    /// allows; else the session ends.
    fn lost(&self, link: &Link) -> Unlink {
        // It said goodbye between transactions: the client loses nothing, and its next work
        // gets another server.
        let between = link.ex.tracker.idle() && link.ex.to_server.is_empty();
        if link.ex.conn.ending
            && between
            && self.mode == PoolMode::Transaction
            && self.pinned.is_empty()
        {
            return Unlink::Release;
        }
        let retry = link.pace.held().then(|| {
            let (cluster, facts) = (&self.members.cluster, self.facts());
            policy::retry(cluster, &self.routes, &facts, link.node, Failure::Lost)
        });
        match retry.flatten() {
            Some(retry) => Unlink::Retry(retry),
            None => Unlink::End(End::ServerGone),
        }
    }

    /// Takes in what the server sent: what the client may see goes to it (held back while
    /// the unit may be retried), the unit's and transaction's times are observed at their
    /// end. Some when the link must end.
    fn take_in(&mut self, link: &mut Link) -> Option<Unlink> {
        let facts = self.facts();
        let cluster = &*self.members.cluster;
        let mut listening = Listening {
            params: &mut self.params,
            refusal: &mut link.refusal,
            held: link.pace.held().then_some(Placing {
                cluster,
                routes: &self.routes,
                facts,
                node: link.node,
            }),
            retry: None,
            own_value: None,
            learnt: None,
            owed: false,
            answered: 0,
            describing: &mut link.describing,
            statements: &mut self.statements,
            described_any: false,
            error_seen: false,
        };
        let taken = link.ex.absorb(Some(&mut self.to_client), &mut listening);
        let (learnt, owed, answered) = (listening.learnt, listening.owed, listening.answered);
        if link.verify == Verify::Waiting {
            if listening.described_any {
                link.verify = Verify::No;
            } else if listening.error_seen {
                link.verify = Verify::Failed;
            }
        }
        if let Some(r) = listening.retry {
            return Some(Unlink::Retry(r));
        }
        if let Some(lsn) = learnt {
            self.wrote_by(lsn);
        }
        // Raised first, then uncounted: a read waiting for it sees the new floor.
        for _ in 0..answered {
            link.pool_pending.done();
        }
        if let (true, FloorDue::Writes { owed, .. }) = (owed, &mut link.floor) {
            *owed = true;
        }
        if taken.is_err() {
            return Some(self.lost(link));
        }
        let ex = &link.ex;
        if !ex.tracker.busy() {
            // Describes skipped after an error are answered by nothing.
            link.describing.clear();
            // Answered: a stand-in skipped after an earlier error has nothing left to replace.
            link.refusal = None;
            if let Some(start) = link.unit_start.take() {
                let metrics = &self.members.pools[link.node].metrics;
                let now = Instant::now();
                link.answered = Some(now);
                (self.reg.slot.answered).fetch_add(1, std::sync::atomic::Ordering::Release);
                metrics.query.observe((now - start).as_secs_f64());
                if ex.tracker.status == TxStatus::Idle {
                    let began = link.xact_start.take().unwrap_or(start);
                    metrics.transaction.observe((now - began).as_secs_f64());
                    metrics.transactions.inc();
                }
            }
        }
        if let Pace::Held { mark } = link.pace {
            // Answered, or answering at length: it reaches the client now. (Nothing of the
            // client's sent yet: what was answered is the pooler's own Describe.)
            let answered = !ex.tracker.busy() && !link.replay.is_empty();
            if answered || self.to_client.len() - mark > HOLD_LIMIT {
                link.pace = Pace::OneUnit;
                link.replay.clear();
            }
        }
        None
    }
}
