//! Named prepared statements across transaction pooling: a client's names map to the
//! pooler's statements, and each server prepares a statement lazily, the first time a client
//! of it needs it there, within max_prepared_statements (LRU per server).
//!
//! The client never sees the difference: the replies to what the pooler sends on its own are
//! dropped, and a Parse of a statement the server already has is answered as if it ran.
//!
//! Nor does a schema change under a statement go unnoticed where the statement is prepared
//! afresh: each time the pooler prepares one it also describes it, and a description that
//! differs from the last starts a new epoch of the statement. A client that described it in
//! an earlier epoch gets "cached plan must not change result type" (0A000) at its next Bind,
//! as from its own server, and prepares it again. Where that Bind starts a unit on a server
//! without the statement, the statement is prepared and described there first, before the
//! Bind goes.

use crate::context::statements::{Registry, Statement};
use crate::protocol::frontend::{self, Message};
use crate::server::exchange::Exchange;
use crate::server::tracker::Reply;
use crate::stats::PoolMetrics;
use std::collections::HashMap;
use std::sync::Arc;

/// A name no statement of ours ever has: closing it is a no-op the server still answers.
const NO_STATEMENT: &[u8] = b"pgsluice_none";

/// One client's names for its statements, each with the epoch of the description the
/// client was given; and its unnamed statement.
#[derive(Default)]
pub struct ClientStatements {
    by_name: HashMap<Box<[u8]>, (Arc<Statement>, u64)>,
    /// The client's pool, a hash of its database and user (`scope`).
    pub scope: u64,
    /// What the client's last Parse of the unnamed statement held (query and parameter
    /// types), while PostgreSQL would keep it: until another Parse of it, a simple Query or
    /// its Close.
    unnamed: Option<Box<[u8]>>,
    /// Whether the unnamed statement has been parsed on the server in this unit. A server's
    /// unnamed statement outlives no unit: another client's work, or the pooler's own
    /// queries, replace it between units.
    unnamed_here: bool,
}

/// The hash that names a (database, user) pool in `Statement::parsed_in`; never 0.
pub fn scope(database: &str, user: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (database, user).hash(&mut h);
    h.finish().max(1)
}

/// `scope` as of now: a statement parsed before the last change of a statement's result
/// (`prepared::reprepared`) is not taken as valid without a server.
pub fn parsed_scope(scope: u64) -> u64 {
    let generation = crate::server::prepared::reprepared();
    (scope ^ generation.wrapping_mul(0x9e37_79b9_7f4a_7c15)).max(1)
}

impl ClientStatements {
    /// No names yet, for a client of the pool `scope` names.
    pub fn new(scope: u64) -> ClientStatements {
        ClientStatements {
            scope,
            ..Default::default()
        }
    }

    /// A new link: the server's unnamed statement is not the client's.
    pub fn new_link(&mut self) {
        self.unnamed_here = false;
    }

    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.by_name.get(name).map(|(s, _)| s)
    }

    pub fn insert(&mut self, name: &[u8], stmt: Arc<Statement>) {
        let epoch = stmt.epoch();
        self.by_name.insert(name.into(), (stmt, epoch));
    }

    pub fn remove(&mut self, name: &[u8]) {
        self.by_name.remove(name);
    }

    /// Whether the client's description of `name` predates a change of its result.
    fn stale(&self, name: &[u8]) -> bool {
        self.by_name
            .get(name)
            .is_some_and(|(s, epoch)| *epoch < s.epoch())
    }

    /// The client has just been given the current description of `stmt`.
    pub fn renew(&mut self, stmt: &Arc<Statement>) {
        for (s, epoch) in self.by_name.values_mut() {
            if Arc::ptr_eq(s, stmt) {
                *epoch = s.epoch();
            }
        }
    }
}

/// Statements the pooler described on a server, in order, until the descriptions arrive:
/// whether the client hears the description too (it asked, so it knows the current one).
pub type Describing = std::collections::VecDeque<(Arc<Statement>, bool)>;

/// What became of a client frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewritten {
    /// Sent under the pooler's names.
    Sent,
    /// Not about a named statement: it goes as it is.
    AsIs,
    /// Not yet: the statement is being prepared and described on this server first; the
    /// frame is taken again once that is answered.
    Hold,
}

/// The ErrorResponse PostgreSQL gives a prepared statement whose result changed.
fn result_changed() -> &'static [u8] {
    static ERROR: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    ERROR.get_or_init(|| super::refusal::feature_error("cached plan must not change result type"))
}

/// What a rewrite needs besides the frame: the client's names, the registry, the server's
/// pool counters, and max_prepared_statements.
pub struct Names<'a> {
    pub statements: &'a mut ClientStatements,
    pub registry: &'a Registry,
    pub metrics: &'a PoolMetrics,
    pub capacity: usize,
}

/// The link's side of a rewrite: the server, what the pooler is describing there, and the
/// error a refused Bind's stand-in is answered with.
pub struct Target<'a> {
    pub ex: &'a mut Exchange,
    pub describing: &'a mut Describing,
    pub refusal: &'a mut Option<&'static [u8]>,
}

impl Names<'_> {
    /// In place of a Bind: a stand-in that fails at Parse, so that the rest of the batch is
    /// skipped as after any error, the client to get `error` instead. The client's unnamed
    /// statement is parsed again where it is used next.
    pub fn refuse_bind(&mut self, to: Target<'_>, error: &'static [u8]) {
        frontend::encode_parse(&mut to.ex.to_server, b"", super::refusal::STAND_IN);
        to.ex.tracker.parse_sent(None, Reply::Forward);
        *to.refusal = Some(error);
        self.statements.unnamed_here = false;
    }

    /// Writes `msg` (whose bytes are `frame`) to the server under the pooler's names.
    pub fn rewrite(&mut self, msg: Message<'_>, frame: &[u8], to: Target<'_>) -> Rewritten {
        let Target {
            ex,
            describing,
            refusal,
        } = to;
        match msg {
            Message::Parse {
                name: b"",
                definition,
                ..
            } => {
                self.statements.unnamed = Some(definition.into());
                self.statements.unnamed_here = true;
                return Rewritten::AsIs;
            }
            // A unit that uses the unnamed statement it did not parse (libpq's PQprepare,
            // then PQdescribePrepared or PQexecPrepared): it is parsed here first, as the
            // client left it, whichever server the unit runs on.
            Message::Bind { statement: b"", .. }
            | Message::Describe {
                kind: b'S',
                name: b"",
            } if !self.statements.unnamed_here => {
                if let Some(definition) = &self.statements.unnamed {
                    frontend::encode_parse(&mut ex.to_server, b"", definition);
                    ex.tracker.parse_sent(None, Reply::Drop);
                    self.statements.unnamed_here = true;
                }
                return Rewritten::AsIs;
            }
            Message::Sync => {
                self.statements.unnamed_here = false;
                return Rewritten::AsIs;
            }
            Message::Query(_)
            | Message::Close {
                kind: b'S',
                name: b"",
            } => {
                self.statements.unnamed = None;
                self.statements.unnamed_here = false;
                return Rewritten::AsIs;
            }
            Message::Parse {
                name, definition, ..
            } if !name.is_empty() => {
                let stmt = self.registry.get(definition);
                self.statements.insert(name, stmt.clone());
                if ex.conn.prepared.touch(stmt.id) {
                    self.metrics.prepared_hits.inc();
                    // Already prepared there: a no-op Close yields the reply the client
                    // expects, in its place among the other replies.
                    frontend::encode_target(&mut ex.to_server, b'C', b'S', NO_STATEMENT);
                    ex.tracker.close_sent(Reply::AsParseComplete);
                } else {
                    self.prepare(ex, describing, &stmt, Reply::Forward, true);
                }
            }
            Message::Bind {
                portal,
                statement,
                params,
            } if !statement.is_empty() => match self.statements.get(statement).cloned() {
                Some(stmt) => {
                    let there = ex.conn.prepared.touch(stmt.id);
                    if !there && stmt.shape_known() && !ex.tracker.busy() && !ex.tracker.unsynced()
                    {
                        // Described here before the Bind goes: the description may have
                        // changed since the client had it.
                        self.prepare(ex, describing, &stmt, Reply::Drop, false);
                        frontend::encode_flush(&mut ex.to_server);
                        ex.tracker.sent(b'H');
                        return Rewritten::Hold;
                    }
                    if self.statements.stale(statement) {
                        // A stand-in fails at Parse, so that the rest of the batch is skipped
                        // as after any error; the client gets PostgreSQL's error instead.
                        frontend::encode_parse(&mut ex.to_server, b"", super::refusal::STAND_IN);
                        ex.tracker.parse_sent(None, Reply::Forward);
                        *refusal = Some(result_changed());
                        return Rewritten::Sent;
                    }
                    if there {
                        self.metrics.prepared_hits.inc();
                    } else {
                        self.prepare(ex, describing, &stmt, Reply::Drop, false);
                    }
                    frontend::encode_bind(&mut ex.to_server, portal, &stmt.name, params);
                }
                // Unknown to us: the server answers with PostgreSQL's own error.
                None => ex.to_server.extend_from_slice(frame),
            },
            Message::Describe { kind: b'S', name } if !name.is_empty() => {
                match self.statements.get(name).cloned() {
                    Some(stmt) => {
                        if ex.conn.prepared.touch(stmt.id) {
                            self.metrics.prepared_hits.inc();
                        } else {
                            self.prepare(ex, describing, &stmt, Reply::Drop, true);
                        }
                        frontend::encode_target(&mut ex.to_server, b'D', b'S', &stmt.name);
                    }
                    None => ex.to_server.extend_from_slice(frame),
                }
            }
            Message::Close { kind: b'S', name } if !name.is_empty() => {
                // The server's statement may serve other clients: only the name goes.
                self.statements.remove(name);
                frontend::encode_target(&mut ex.to_server, b'C', b'S', NO_STATEMENT);
                ex.tracker.close_sent(Reply::Forward);
            }
            _ => return Rewritten::AsIs,
        }
        Rewritten::Sent
    }

    /// Sends a Parse of the pooler's statement, closing the least recently used one first
    /// when the server's cache is full, and a Describe of it whose reply is the pooler's.
    /// `told`: the client hears the description too (it sent the Parse or a Describe).
    fn prepare(
        &self,
        ex: &mut Exchange,
        describing: &mut Describing,
        stmt: &Arc<Statement>,
        reply: Reply,
        told: bool,
    ) {
        self.metrics.prepared_misses.inc();
        if ex.conn.prepared.take_doomed(stmt.id) {
            frontend::encode_target(&mut ex.to_server, b'C', b'S', &stmt.name);
            ex.tracker.close_sent(Reply::Drop);
        }
        if let Some(victim) = ex.conn.prepared.insert(stmt.id, self.capacity) {
            self.metrics.prepared_evictions.inc();
            let name = format!("pgsluice_{victim}");
            frontend::encode_target(&mut ex.to_server, b'C', b'S', name.as_bytes());
            ex.tracker.close_sent(Reply::Drop);
        }
        frontend::encode_parse(&mut ex.to_server, &stmt.name, &stmt.definition);
        ex.tracker.parse_sent(Some(stmt.id), reply);
        frontend::encode_target(&mut ex.to_server, b'D', b'S', &stmt.name);
        ex.tracker.own_describe_sent(stmt.id);
        describing.push_back((stmt.clone(), told));
    }
}

/// A description of `statement` arrived (`shape`, a hash): the statement's epoch moves on if
/// it changed, and a client that was told it is current again. Entries before it were
/// skipped by the server after an error.
pub fn described(
    describing: &mut Describing,
    statements: &mut ClientStatements,
    statement: u64,
    shape: u64,
) {
    while let Some((stmt, told)) = describing.pop_front() {
        if stmt.id == statement {
            stmt.described(shape);
            stmt.parsed_in(parsed_scope(statements.scope));
            if told {
                statements.renew(&stmt);
            }
            return;
        }
    }
}
