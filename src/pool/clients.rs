//! How many clients each database and each user has connected, held to
//! max_db_client_connections and max_user_client_connections (PgBouncer 1.24's): counted
//! by name, so that pools a reload replaced still count the clients they keep.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct ClientLimits {
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    databases: HashMap<String, usize>,
    users: HashMap<String, usize>,
}

/// The limit a client would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    Database,
    User,
}

impl Full {
    /// The setting's name, as PgBouncer's error gives it.
    pub fn setting(self) -> &'static str {
        match self {
            Full::Database => "max_db_client_connections",
            Full::User => "max_user_client_connections",
        }
    }
}

impl ClientLimits {
    /// Counts one more client of `database` as `user`, unless that would be more than
    /// `max_db` (or `max_user`) allow; 0 is no limit. Checked and counted at once, so that
    /// clients logging in together cannot pass a limit between them.
    pub fn join(
        &self,
        (database, max_db): (&str, usize),
        (user, max_user): (&str, usize),
    ) -> Result<(), Full> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let of = |map: &HashMap<String, usize>, name: &str| map.get(name).copied().unwrap_or(0);
        if max_db > 0 && of(&c.databases, database) >= max_db {
            return Err(Full::Database);
        }
        if max_user > 0 && of(&c.users, user) >= max_user {
            return Err(Full::User);
        }
        let Counts { databases, users } = &mut *c;
        for (map, name) in [(databases, database), (users, user)] {
            // A name already counted costs no allocation.
            match map.get_mut(name) {
                Some(n) => *n += 1,
                None => {
                    map.insert(name.to_owned(), 1);
                }
            }
        }
        Ok(())
    }

    /// A client `join` counted has gone.
    pub fn leave(&self, database: &str, user: &str) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let Counts { databases, users } = &mut *c;
        for (map, name) in [(databases, database), (users, user)] {
            if let Some(n) = map.get_mut(name) {
                *n -= 1;
                if *n == 0 {
                    map.remove(name);
                }
            }
        }
    }

    /// Clients connected to `database`.
    pub fn of_database(&self, database: &str) -> usize {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.databases.get(database).copied().unwrap_or(0)
    }

    /// Clients connected as `user`, to any database.
    pub fn of_user(&self, user: &str) -> usize {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.users.get(user).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_per_database_and_per_user() {
        let c = ClientLimits::default();
        assert_eq!(c.join(("a", 2), ("u", 0)), Ok(()));
        assert_eq!(c.join(("a", 2), ("v", 0)), Ok(()));
        assert_eq!(c.join(("a", 2), ("u", 0)), Err(Full::Database));
        assert_eq!(c.join(("b", 0), ("u", 1)), Err(Full::User));
        assert_eq!(c.join(("b", 0), ("w", 1)), Ok(()));
        assert_eq!((c.of_database("a"), c.of_user("u")), (2, 1));
        c.leave("a", "u");
        assert_eq!(c.join(("a", 2), ("u", 1)), Ok(()));
        for (db, user) in [("a", "u"), ("a", "v"), ("b", "w")] {
            c.leave(db, user);
        }
        assert_eq!((c.of_database("a"), c.of_user("u")), (0, 0));
        assert!(
            c.counts.lock().unwrap().databases.is_empty(),
            "no names kept"
        );
    }
}
