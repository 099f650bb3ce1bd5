//! Which of the pooler's named statements one server has prepared: a small LRU bounded by
//! max_prepared_statements. Entries are pending from the moment their Parse is sent until
//! ParseComplete confirms them; only confirmed ones are evicted.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub struct PreparedCache {
    entries: HashMap<u64, Entry>,
    tick: u64,
    /// Statements used at or after this tick belong to the batch in flight: evicting them
    /// would close portals the batch still needs.
    batch_start: u64,
    /// Statements the server may still have, in a form that no longer works: closed before
    /// they are prepared again.
    doomed: HashSet<u64>,
    /// The count of `source` (`REPREPARE`) this cache has caught up with.
    epoch: u64,
    source: &'static AtomicU64,
}

impl Default for PreparedCache {
    fn default() -> Self {
        PreparedCache::counting(&REPREPARE)
    }
}

/// Bumped whenever a server says a prepared statement's result changed under it: the same
/// DDL broke that statement on every server, so every cache prepares its statements afresh.
/// Process-wide, because such a change is rare and re-preparing costs one Parse per
/// statement and server.
static REPREPARE: AtomicU64 = AtomicU64::new(0);

/// How many times statements have been doomed process-wide.
pub fn reprepared() -> u64 {
    REPREPARE.load(Ordering::Relaxed)
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    used: u64,
    confirmed: bool,
}

impl PreparedCache {
    fn counting(source: &'static AtomicU64) -> PreparedCache {
        PreparedCache {
            entries: HashMap::new(),
            tick: 0,
            batch_start: 0,
            doomed: HashSet::new(),
            epoch: source.load(Ordering::Relaxed),
            source,
        }
    }

    /// Is the statement prepared (or being prepared) here? Marks it as just used.
    pub fn touch(&mut self, id: u64) -> bool {
        self.catch_up();
        self.tick += 1;
        match self.entries.get_mut(&id) {
            Some(e) => {
                e.used = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records a Parse about to be sent. Returns a statement to close first when the cache is
    /// full, if one may go.
    pub fn insert(&mut self, id: u64, capacity: usize) -> Option<u64> {
        self.catch_up();
        self.tick += 1;
        let victim = if self.entries.len() >= capacity {
            self.entries
                .iter()
                .filter(|(_, e)| e.confirmed && e.used < self.batch_start)
                .min_by_key(|(_, e)| e.used)
                .map(|(id, _)| *id)
        } else {
            None
        };
        if let Some(v) = victim {
            self.entries.remove(&v);
        }
        self.entries.insert(
            id,
            Entry {
                used: self.tick,
                confirmed: false,
            },
        );
        victim
    }

    pub fn confirm(&mut self, id: u64) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.confirmed = true;
        }
    }

    /// The Parse never ran (an earlier error in its batch skipped it).
    pub fn forget(&mut self, id: u64) {
        self.entries.remove(&id);
    }

    /// DISCARD ALL or DEALLOCATE ALL ran: the server has none left.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.doomed.clear();
    }

    /// A statement failed because its result changed: every server's statements are
    /// prepared afresh when next used.
    pub fn doom_all(&mut self) {
        self.source.fetch_add(1, Ordering::Relaxed);
        self.catch_up();
    }

    /// Dooms what this server has if another server's statements were doomed since.
    fn catch_up(&mut self) {
        let now = self.source.load(Ordering::Relaxed);
        if self.epoch != now {
            self.epoch = now;
            self.doomed.extend(self.entries.keys());
            self.entries.clear();
        }
    }

    /// Whether the server may still have `id` in a form that fails: then it must be closed
    /// before it is prepared again (once).
    pub fn take_doomed(&mut self, id: u64) -> bool {
        self.doomed.remove(&id)
    }

    /// A Sync went out: what follows is a new batch.
    pub fn new_batch(&mut self) {
        self.batch_start = self.tick + 1;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doomed_statements_are_prepared_afresh_once_on_every_server() {
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let (mut a, mut b) = (
            PreparedCache::counting(&COUNT),
            PreparedCache::counting(&COUNT),
        );
        for c in [&mut a, &mut b] {
            c.insert(1, 10);
            c.confirm(1);
        }
        a.doom_all();
        for c in [&mut a, &mut b] {
            assert!(!c.touch(1), "must be prepared again");
            assert!(c.take_doomed(1));
            assert!(!c.take_doomed(1), "closed once");
            c.insert(1, 10);
            assert!(c.touch(1));
        }
    }

    #[test]
    fn evicts_the_least_recently_used_confirmed_statement() {
        let mut c = PreparedCache::default();
        for id in 1..=3 {
            assert_eq!(c.insert(id, 3), None);
            c.confirm(id);
        }
        c.new_batch();
        assert!(c.touch(1));
        assert_eq!(c.insert(4, 3), Some(2));
        assert!(!c.touch(2));
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn keeps_pending_and_current_batch_statements() {
        let mut c = PreparedCache::default();
        c.insert(1, 1);
        assert_eq!(c.insert(2, 1), None, "1 is still pending");
        c.confirm(1);
        c.confirm(2);
        assert_eq!(
            c.insert(3, 1),
            None,
            "1 and 2 are used by the batch in flight"
        );
        c.new_batch();
        assert!(c.insert(4, 1).is_some());
    }
}
