//! Named prepared statements across transaction pooling: a client's names map to the
//! pooler's statements, and each server prepares a statement lazily, the first time a client
//! of it needs it there, within max_prepared_statements (LRU per server).
//!
//! The client never sees the difference: the replies to what the pooler sends on its own are
//! dropped, and a Parse of a statement the server already has is answered as if it ran.

use crate::context::statements::{Registry, Statement};
use crate::protocol::frontend::{self, Message};
use crate::server::exchange::Exchange;
use crate::server::tracker::Reply;
use crate::stats::PoolMetrics;
use std::collections::HashMap;
use std::sync::Arc;

/// A name no statement of ours ever has: closing it is a no-op the server still answers.
const NO_STATEMENT: &[u8] = b"pgsluice_none";

/// One client's names for its statements.
#[derive(Default)]
pub struct ClientStatements {
    by_name: HashMap<Box<[u8]>, Arc<Statement>>,
}

impl ClientStatements {
    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.by_name.get(name)
    }

    pub fn insert(&mut self, name: &[u8], stmt: Arc<Statement>) {
        self.by_name.insert(name.into(), stmt);
    }

    pub fn remove(&mut self, name: &[u8]) {
        self.by_name.remove(name);
    }
}

/// What a rewrite needs besides the frame: the client's names, the registry, the server's
/// pool counters, and max_prepared_statements.
pub struct Names<'a> {
    pub statements: &'a mut ClientStatements,
    pub registry: &'a Registry,
    pub metrics: &'a PoolMetrics,
    pub capacity: usize,
}

impl Names<'_> {
    /// Writes `msg` (whose bytes are `frame`) to the server under the pooler's names. False
    /// when the frame is not about a named statement and goes as it is.
    pub fn rewrite(&mut self, msg: Message<'_>, frame: &[u8], ex: &mut Exchange) -> bool {
        match msg {
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
                    self.prepare(ex, &stmt, Reply::Forward);
                }
            }
            Message::Bind {
                portal,
                statement,
                params,
            } if !statement.is_empty() => match self.statements.get(statement) {
                Some(stmt) => {
                    self.ensure_prepared(ex, stmt);
                    frontend::encode_bind(&mut ex.to_server, portal, &stmt.name, params);
                }
                // Unknown to us: the server answers with PostgreSQL's own error.
                None => ex.to_server.extend_from_slice(frame),
            },
            Message::Describe { kind: b'S', name } if !name.is_empty() => {
                match self.statements.get(name) {
                    Some(stmt) => {
                        self.ensure_prepared(ex, stmt);
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
            _ => return false,
        }
        true
    }

    /// Sends a Parse of the pooler's statement, closing the least recently used one first
    /// when the server's cache is full.
    fn prepare(&self, ex: &mut Exchange, stmt: &Statement, reply: Reply) {
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
    }

    /// Before a Bind or Describe of a statement: prepare it on this server if it is not
    /// there.
    fn ensure_prepared(&self, ex: &mut Exchange, stmt: &Statement) {
        if ex.conn.prepared.touch(stmt.id) {
            self.metrics.prepared_hits.inc();
        } else {
            self.prepare(ex, stmt, Reply::Drop);
        }
    }
}
