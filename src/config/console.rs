//! Who may use the admin console, and under which database names it answers.

use super::Config;

/// Names of the console's virtual database, unless a real database is configured so.
pub const CONSOLE_DATABASES: [&str; 2] = ["pgsluice", "pgbouncer"];

/// What a console user may do: everything (admin_users) or only SHOW (stats_users).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Admin,
    Stats,
}

impl Config {
    /// Whether a client asking for `database` gets the console.
    pub fn is_console(&self, database: &str) -> bool {
        CONSOLE_DATABASES.contains(&database) && !self.databases.contains_key(database)
    }

    /// What `user` may do on the console, if anything.
    pub fn console_access(&self, user: &str) -> Option<Access> {
        let g = &self.general;
        if g.admin_users.iter().any(|u| u == user) {
            Some(Access::Admin)
        } else if g.stats_users.iter().any(|u| u == user) {
            Some(Access::Stats)
        } else {
            None
        }
    }
}
