//! The registry of prepared statements across transaction pooling.
//!
//! A client's statement names are its own (`client/rewrite.rs`); what a server prepares is the
//! pooler's statement, named `pgsluice_<id>` and identified by the statement's definition
//! (query text and parameter types), so clients that prepare the same query share one
//! prepared statement per server.

use crate::router::classify::{self, Class, Hint, WriteFunctions, WriteReason};
use crate::router::effects::{self, Effects};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

#[derive(Debug)]
pub struct Statement {
    pub id: u64,
    /// Server-side name.
    pub name: Box<[u8]>,
    /// The Parse body after the name: query text and parameter types.
    pub definition: Bytes,
    /// What the query is, for routing; worked out once, when the router first asks.
    class: OnceLock<(Class, Option<Hint>)>,
    /// What running it may do to the session; worked out once, at its first Bind.
    effects: OnceLock<Effects>,
    /// A replica refused it as a write (25006): it goes to the primary from now on.
    wrote: AtomicBool,
    /// A hash of the result description servers last gave it (0: none seen yet), and how many
    /// times that description has changed (a schema change under it): a client that
    /// described it before the last change must prepare it again, as on PostgreSQL.
    shape: AtomicU64,
    epoch: AtomicU64,
    /// The pool (a hash of its database and user) where a server last parsed it, so that a
    /// client of that pool preparing it again needs no server to hear it is valid.
    parsed_in: AtomicU64,
}

impl Statement {
    /// How many times its result description has changed.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// Whether a server's description of it has been seen.
    pub fn shape_known(&self) -> bool {
        self.shape.load(Ordering::Relaxed) != 0
    }

    /// A server described its result as `shape` (a hash): returns the epoch that description
    /// belongs to, a new one if it differs from the last.
    pub fn described(&self, shape: u64) -> u64 {
        let shape = shape.max(1);
        let was = self.shape.swap(shape, Ordering::Relaxed);
        if was != 0 && was != shape {
            return self.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        }
        self.epoch()
    }

    pub fn class(&self, write_functions: &WriteFunctions) -> (Class, Option<Hint>) {
        let (class, hint) = *self.class.get_or_init(|| {
            let text = self.definition.split(|&b| b == 0).next().unwrap_or(&[]);
            match std::str::from_utf8(text) {
                Ok(sql) => classify::analyze(sql, write_functions),
                Err(_) => (Class::Write(WriteReason::Unreadable), None),
            }
        });
        if class == Class::Read && self.wrote.load(Ordering::Relaxed) {
            return (Class::Write(WriteReason::WriteFunction), hint);
        }
        (class, hint)
    }

    /// A server of pool `scope` parsed and described it.
    pub fn parsed_in(&self, scope: u64) {
        self.parsed_in.store(scope, Ordering::Relaxed);
    }

    /// Whether a server of pool `scope` was the last to parse it.
    pub fn valid_in(&self, scope: u64) -> bool {
        scope != 0 && self.parsed_in.load(Ordering::Relaxed) == scope
    }

    /// A replica refused it as a write: every client's next Bind of it goes to the primary.
    pub fn mark_wrote(&self) {
        self.wrote.store(true, Ordering::Relaxed);
    }

    /// Its query text.
    pub fn text(&self) -> &[u8] {
        self.definition.split(|&b| b == 0).next().unwrap_or(&[])
    }

    pub fn effects(&self) -> &Effects {
        self.effects
            .get_or_init(|| effects::of(self.definition.split(|&b| b == 0).next().unwrap_or(&[])))
    }
}

/// Every statement some client has prepared, by definition. Entries die with their last client.
#[derive(Default)]
pub struct Registry {
    by_definition: Mutex<HashMap<Bytes, Weak<Statement>>>,
    next_id: AtomicU64,
    purge_at: AtomicU64,
}

impl Registry {
    /// The statement of `definition`, if some client has it now.
    pub fn find(&self, definition: &[u8]) -> Option<Arc<Statement>> {
        let map = self.by_definition.lock().unwrap_or_else(|e| e.into_inner());
        map.get(definition).and_then(Weak::upgrade)
    }

    pub fn get(&self, definition: &[u8]) -> Arc<Statement> {
        let mut map = self.by_definition.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get(definition).and_then(Weak::upgrade) {
            return s;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let definition = Bytes::copy_from_slice(definition);
        let stmt = Arc::new(Statement {
            id,
            name: format!("pgsluice_{id}").into_bytes().into_boxed_slice(),
            definition: definition.clone(),
            class: OnceLock::new(),
            effects: OnceLock::new(),
            wrote: AtomicBool::new(false),
            shape: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            parsed_in: AtomicU64::new(0),
        });
        map.insert(definition, Arc::downgrade(&stmt));
        // Drop dead entries whenever the map has doubled since the last sweep.
        if map.len() as u64 >= self.purge_at.load(Ordering::Relaxed) {
            map.retain(|_, w| w.strong_count() > 0);
            self.purge_at
                .store((map.len() as u64 * 2).max(1024), Ordering::Relaxed);
        }
        stmt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_definition_same_statement_until_all_clients_drop_it() {
        let r = Registry::default();
        let a = r.get(b"select 1\0\0\0");
        let b = r.get(b"select 1\0\0\0");
        assert_eq!(a.id, b.id);
        assert_ne!(r.get(b"select 2\0\0\0").id, a.id);
        let id = a.id;
        drop((a, b));
        assert!(r.find(b"select 1\0\0\0").is_none(), "gone with its clients");
        assert_ne!(r.get(b"select 1\0\0\0").id, id);
    }

    #[test]
    fn a_changed_description_starts_a_new_epoch() {
        let s = Registry::default().get(b"select * from t\0\0\0");
        assert!(!s.shape_known());
        assert_eq!(s.described(7), 0, "the first description");
        assert_eq!(s.described(7), 0, "the same again");
        assert_eq!(s.described(8), 1, "a column was added");
        assert_eq!(s.epoch(), 1);
    }
}
