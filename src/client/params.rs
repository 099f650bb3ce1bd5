//! The settings a client's session has, whichever server it gets, and bringing a server in
//! line with them at checkout: what the client has and the server lacks is set, what the
//! server carries from an earlier client and this one lacks is reset, in one round trip.
//!
//! A client starts with the settings of its startup packet (and `options=-c`). They change
//! with what the server reports (ParameterStatus) and with what `client::probe` learns after a
//! unit of work that may have changed a setting; its startup values are kept for RESET.

use crate::protocol::backend::Action;
use crate::protocol::frontend;
use crate::server::exchange::{settable, Exchange, Replies};
use crate::server::settings::Settings;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default)]
pub struct SessionParams {
    /// What the client's session has now.
    pub current: Settings,
    /// What it had at login, for RESET; None while nothing has changed (most clients never
    /// change anything, and should not hold their settings twice).
    startup: Option<Box<Settings>>,
}

impl SessionParams {
    pub fn new(list: Vec<(String, String)>) -> SessionParams {
        SessionParams {
            current: Settings::new(list.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            startup: None,
        }
    }

    /// The client's settings at login.
    pub fn startup(&self) -> &Settings {
        self.startup.as_deref().unwrap_or(&self.current)
    }

    /// Sets (Some) or removes (None) one of the client's settings.
    pub fn put(&mut self, name: &str, value: Option<&str>) {
        if self.current.get(name) == value {
            return;
        }
        if self.startup.is_none() {
            self.startup = Some(Box::new(self.current.clone()));
        }
        self.current.put(name, value);
    }

    pub fn fingerprint(&self) -> u64 {
        self.current.fingerprint()
    }

    /// A parameter the server reported while the client held it: the client's doing.
    pub fn reported(&mut self, name: &str, value: &str) {
        if settable(name) {
            self.put(name, Some(value));
        }
    }

    /// Brings the server's session settings in line with the client's before the client's
    /// work runs.
    pub async fn bring_in_line(
        &mut self,
        ex: &mut Exchange,
        timeout: Duration,
    ) -> Result<(), Misaligned> {
        if ex.conn.session.fingerprint() == self.fingerprint() {
            return Ok(());
        }
        let sql = alignment(&self.current, &ex.conn.session);
        if !sql.is_empty() {
            frontend::encode_query(&mut ex.to_server, &sql);
            ex.tracker.sent(b'Q');
            let mut sync = Syncing {
                params: self,
                failure: None,
            };
            let done = ex.drain(Instant::now() + timeout, &mut sync).await;
            if let Some(refused) = sync.failure {
                return Err(refused);
            }
            if !done || !ex.tracker.idle() {
                return Err(Misaligned::Lost);
            }
        }
        // What the server reported on the way (defaults coming back after a RESET among
        // them) is now what the client has: the server has exactly the client's settings.
        ex.conn.session = self.current.clone();
        Ok(())
    }
}

/// Why a server could not be brought in line with a client's settings.
#[derive(Debug, thiserror::Error)]
pub enum Misaligned {
    /// The server answered a statement with an error: its SQLSTATE and message.
    #[error("{message}")]
    Refused { code: String, message: String },
    /// The connection broke, or the server did not answer in time.
    #[error("could not apply session settings")]
    Lost,
}

/// The statements that take a server from `has` to `wants`: one Query, in an order that
/// lets each succeed. The identity a server carries from an earlier client (its
/// session_authorization and role) may lack privileges the other statements need (a
/// superuser-only setting such as session_replication_role): it goes back to the server
/// login's first, and the client's identity is taken last (the session user, then the role,
/// as a SET ROLE after SET SESSION AUTHORIZATION would have left it).
pub fn alignment(wants: &Settings, has: &Settings) -> String {
    const IDENTITY: [&str; 2] = ["session_authorization", "role"];
    let mut others: Vec<(&str, Option<&str>)> = Vec::new();
    for (name, value) in wants.iter() {
        if !IDENTITY.contains(&name) && has.get(name) != Some(value) {
            others.push((name, Some(value)));
        }
    }
    for (name, _) in has.iter() {
        if !IDENTITY.contains(&name) && wants.get(name).is_none() {
            others.push((name, None));
        }
    }
    let carried = IDENTITY.iter().any(|name| has.get(name).is_some());
    let reset_first = carried && !others.is_empty();
    let mut steps: Vec<(&str, Option<&str>)> = Vec::new();
    if reset_first {
        steps.extend(
            IDENTITY
                .iter()
                .rev()
                .filter(|n| has.get(n).is_some())
                .map(|n| (*n, None)),
        );
    }
    steps.extend(others);
    for name in IDENTITY {
        let now = if reset_first { None } else { has.get(name) };
        if wants.get(name) != now {
            steps.push((name, wants.get(name)));
        }
    }
    let mut sql = String::new();
    for (name, value) in steps {
        match value {
            Some(v) => {
                sql.push_str("SELECT pg_catalog.set_config(");
                sql.push_str(&quote_literal(name));
                sql.push_str(", ");
                sql.push_str(&quote_literal(v));
                sql.push_str(", false);");
            }
            None => {
                sql.push_str("RESET ");
                sql.push_str(&quote_ident(name));
                sql.push(';');
            }
        }
    }
    sql
}

/// Hears the replies to the pooler's statements: what the server reports, and its first
/// error.
struct Syncing<'a> {
    params: &'a mut SessionParams,
    failure: Option<Misaligned>,
}

impl Replies for Syncing<'_> {
    fn parameter(&mut self, name: &str, value: &str) {
        // The server's own spelling of a value the client asked for.
        if self.params.current.get(name).is_some() {
            self.params.reported(name, value);
        }
    }

    fn error(&mut self, code: &[u8], message: &[u8]) -> Action {
        self.failure.get_or_insert_with(|| Misaligned::Refused {
            code: String::from_utf8_lossy(code).into_owned(),
            message: String::from_utf8_lossy(message).into_owned(),
        });
        Action::Forward
    }
}

/// A string literal safe under any standard_conforming_strings setting.
pub fn quote_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 3);
    out.push_str("E'");
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A setting's name for RESET: dotted custom names quoted part by part.
fn quote_ident(name: &str) -> String {
    name.split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_values_stay_for_reset() {
        let mut p = SessionParams::new(vec![("datestyle".into(), "Postgres, MDY".into())]);
        assert_eq!(p.startup(), &p.current);
        p.put("datestyle", Some("ISO, DMY"));
        p.put("search_path", Some("tenant_a"));
        assert_eq!(p.startup().get("datestyle"), Some("Postgres, MDY"));
        assert_eq!(p.startup().get("search_path"), None);
        assert_eq!(p.current.get("datestyle"), Some("ISO, DMY"));
    }

    #[test]
    fn only_settable_parameters_follow_the_client() {
        let mut p = SessionParams::default();
        p.reported("server_version", "15.0");
        p.reported("in_hot_standby", "on");
        p.reported("timezone", "UTC");
        assert_eq!(
            p.current.iter().collect::<Vec<_>>(),
            vec![("timezone", "UTC")]
        );
    }

    #[test]
    fn alignment_sets_what_is_missing_and_resets_what_is_left_over() {
        let wants = Settings::new([("role", "app"), ("search_path", "a, b"), ("x.y", "it's")]);
        let has = Settings::new([
            ("search_path", "a, b"),
            ("statement_timeout", "5000"),
            ("session_authorization", "bob"),
        ]);
        assert_eq!(
            alignment(&wants, &has),
            "RESET \"session_authorization\";\
             SELECT pg_catalog.set_config(E'x.y', E'it''s', false);\
             RESET \"statement_timeout\";\
             SELECT pg_catalog.set_config(E'role', E'app', false);"
        );
        assert_eq!(alignment(&wants, &wants), "");
    }

    #[test]
    fn a_superuser_only_setting_is_applied_before_the_clients_identity() {
        // A client that set session_replication_role as a superuser, then SET SESSION
        // AUTHORIZATION to another user: on a fresh server the setting comes first.
        let wants = Settings::new([
            ("session_authorization", "user2"),
            ("session_replication_role", "replica"),
        ]);
        assert_eq!(
            alignment(&wants, &Settings::default()),
            "SELECT pg_catalog.set_config(E'session_replication_role', E'replica', false);\
             SELECT pg_catalog.set_config(E'session_authorization', E'user2', false);"
        );
        // A server left as another client's user, with the same role: the identity goes back
        // to the server login's while the setting changes, then is taken again.
        let has = Settings::new([("role", "r"), ("session_authorization", "user2")]);
        let wants = Settings::new([
            ("role", "r"),
            ("session_authorization", "user2"),
            ("session_replication_role", "replica"),
        ]);
        assert_eq!(
            alignment(&wants, &has),
            "RESET \"role\";RESET \"session_authorization\";\
             SELECT pg_catalog.set_config(E'session_replication_role', E'replica', false);\
             SELECT pg_catalog.set_config(E'session_authorization', E'user2', false);\
             SELECT pg_catalog.set_config(E'role', E'r', false);"
        );
        // Only the identity differs: nothing else to reset.
        let wants = Settings::new([("role", "s")]);
        let has = Settings::new([("role", "r")]);
        assert_eq!(
            alignment(&wants, &has),
            "SELECT pg_catalog.set_config(E'role', E's', false);"
        );
    }

    #[test]
    fn literals_survive_quotes_and_backslashes() {
        assert_eq!(quote_literal("a'b\\c"), "E'a''b\\\\c'");
        assert_eq!(quote_ident("my.\"x"), "\"my\".\"\"\"x\"");
    }
}
