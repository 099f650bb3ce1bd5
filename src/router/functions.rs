//! Which reads write: calls of the functions that write (the built-in list, the configured
//! `write_functions`, and the user functions the catalog says are VOLATILE: one sorted list per
//! database, looked up by name, without schema and in any case), and statement texts a replica
//! refused with 25006, remembered per database. Beside them, the database's sequences: a read
//! of one is the primary's to answer (a replica has the value the primary logged, up to 32
//! ahead of the one it gave out).

use arc_swap::{ArcSwap, Guard};
use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Functions that write, whatever the catalog says.
const BUILT_IN: &[&str] = &[
    "nextval",
    "setval",
    // Not writes, but they answer with what the session's nextval gave, which only the
    // primary's servers hold.
    "currval",
    "lastval",
    "set_config",
    "pg_notify",
    "dblink_exec",
    "txid_current",
    "pg_current_xact_id",
    // Index maintenance a replica refuses ("recovery is in progress").
    "brin_summarize_range",
    "brin_summarize_new_values",
    "brin_desummarize_range",
    "gin_clean_pending_list",
    // The primary's own: its WAL, slots and backends, which a replica refuses or has others of.
    "pg_current_wal_lsn",
    "pg_current_wal_insert_lsn",
    "pg_current_wal_flush_lsn",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_logical_emit_message",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_replication_slot_advance",
    "pg_terminate_backend",
    "pg_cancel_backend",
];

/// Families of functions that write, by the start of their names.
const PREFIXES: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_xact_lock",
    "pg_try_advisory",
    "lo_",
];

/// The names beyond the built-in ones, sorted and lowercase; and the sequences' names, as
/// PostgreSQL keeps them, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteFunctions {
    names: Vec<Box<str>>,
    sequences: Vec<Box<str>>,
}

impl WriteFunctions {
    /// From the configured names and those the catalog gave.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> WriteFunctions {
        let mut names: Vec<Box<str>> = names
            .into_iter()
            .map(|n| n.to_ascii_lowercase().into_boxed_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        WriteFunctions {
            names,
            sequences: Vec::new(),
        }
    }

    /// With the database's sequences, by name (without schema).
    pub fn with_sequences<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut sequences: Vec<Box<str>> = names.into_iter().map(Box::from).collect();
        sequences.sort_unstable();
        sequences.dedup();
        self.sequences = sequences;
        self
    }

    /// Whether `name` (lowercase, as the tokenizer gives a word; exact, as a quoted name) may
    /// be a sequence's.
    pub fn is_sequence(&self, name: &str) -> bool {
        self.sequences
            .binary_search_by(|n| n.as_ref().cmp(name))
            .is_ok()
    }

    /// Whether a call of `function` (lowercase, as the tokenizer gives a word; exact, as a
    /// quoted name) may write.
    pub fn contains(&self, function: &str) -> bool {
        BUILT_IN.contains(&function)
            || PREFIXES.iter().any(|p| function.starts_with(p))
            || self.find(function)
    }

    fn find(&self, function: &str) -> bool {
        if function.bytes().any(|b| b.is_ascii_uppercase()) {
            return self
                .names
                .binary_search_by(|n| n.as_ref().cmp(function.to_ascii_lowercase().as_str()))
                .is_ok();
        }
        self.names
            .binary_search_by(|n| n.as_ref().cmp(function))
            .is_ok()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn sequences(&self) -> usize {
        self.sequences.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Statement texts remembered as writes, at most: past it the memory starts again (the
/// catalog, read again meanwhile, covers the functions behind most of them).
const REMEMBERED: usize = 10_000;

/// What one database's reads must know of writes.
#[derive(Debug, Default)]
pub struct Catalog {
    functions: ArcSwap<WriteFunctions>,
    /// Hashes of statement texts that turned out to write.
    wrote: Mutex<HashSet<u64>>,
    /// Whether `wrote` has anything: most databases never need a look at it.
    any_wrote: AtomicBool,
}

impl Catalog {
    pub fn functions(&self) -> Guard<Arc<WriteFunctions>> {
        self.functions.load()
    }

    pub fn set_functions(&self, functions: WriteFunctions) {
        self.functions.store(Arc::new(functions));
    }

    /// `sql` was refused by a replica as a write: the next time it goes to the primary.
    pub fn remember_write(&self, sql: &[u8]) {
        let mut wrote = self.wrote.lock().unwrap_or_else(|e| e.into_inner());
        if wrote.len() >= REMEMBERED {
            wrote.clear();
        }
        wrote.insert(text_hash(sql));
        self.any_wrote.store(true, Ordering::Relaxed);
    }

    /// Whether `sql` is remembered as a write.
    pub fn known_write(&self, sql: &[u8]) -> bool {
        if !self.any_wrote.load(Ordering::Relaxed) {
            return false;
        }
        let hash = text_hash(sql);
        let wrote = self.wrote.lock().unwrap_or_else(|e| e.into_inner());
        wrote.contains(&hash)
    }
}

fn text_hash(sql: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    sql.hash(&mut h);
    h.finish()
}

/// Every database's catalog view, made on first use and kept for as long as the process runs
/// (as the routing counters are).
#[derive(Debug, Default)]
pub struct Catalogs {
    map: Mutex<BTreeMap<String, Arc<Catalog>>>,
}

impl Catalogs {
    pub fn of(&self, database: &str) -> Arc<Catalog> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(database.to_owned()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_configured_and_catalog_names() {
        let f = WriteFunctions::new(["Audit_Insert", "bump", "bump"]);
        assert_eq!(f.len(), 2);
        for name in [
            "nextval",
            "pg_advisory_lock_shared",
            "lo_import",
            "audit_insert",
            "bump",
        ] {
            assert!(f.contains(name), "{name}");
        }
        assert!(
            f.contains("BUMP"),
            "a quoted name in another case: still looked up"
        );
        for name in ["now", "count", "bumped", "pg_advisory_unlock"] {
            assert!(!f.contains(name), "{name}");
        }
        assert!(!WriteFunctions::default().contains("bump"));
    }

    #[test]
    fn refused_texts_are_remembered() {
        let c = Catalog::default();
        assert!(!c.known_write(b"SELECT f()"));
        c.remember_write(b"SELECT f()");
        assert!(c.known_write(b"SELECT f()"));
        assert!(!c.known_write(b"SELECT g()"));
        c.set_functions(WriteFunctions::new(["g"]));
        assert!(c.functions().contains("g"));
    }
}
