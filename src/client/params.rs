//! The session parameters a client wants on whichever server it gets, and bringing a server
//! in line with them at checkout. A fingerprint makes a server already in line cost one
//! comparison per checkout, not a lookup per parameter.
//!
//! Kept packed in one string (`name\0value\0…`): every idle client holds one, and a list of
//! separately allocated pairs would cost several times the memory.

use crate::protocol::frontend;
use crate::server::exchange::{Exchange, Replies};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

/// Session parameters PostgreSQL reports and a client may set: the pooler keeps each client's
/// values and re-applies them on whichever server the client gets.
pub const TRACKED: [&str; 6] = [
    "application_name",
    "client_encoding",
    "datestyle",
    "intervalstyle",
    "standard_conforming_strings",
    "timezone",
];

#[derive(Debug, Clone, Default)]
pub struct SessionParams {
    packed: Box<str>,
    fingerprint: u64,
}

impl SessionParams {
    pub fn new(list: Vec<(String, String)>) -> SessionParams {
        let mut packed = String::new();
        for (k, v) in &list {
            push(&mut packed, k, v);
        }
        SessionParams::from_packed(packed)
    }

    fn from_packed(packed: String) -> SessionParams {
        let mut h = DefaultHasher::new();
        packed.hash(&mut h);
        SessionParams {
            packed: packed.into_boxed_str(),
            fingerprint: h.finish(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut parts = self.packed.split('\0');
        std::iter::from_fn(move || {
            let k = parts.next().filter(|k| !k.is_empty())?;
            Some((k, parts.next().unwrap_or("")))
        })
    }

    /// Records a value the server reported for a parameter this client tracks.
    pub fn set(&mut self, name: &str, value: &str) {
        if self.iter().any(|(k, v)| k == name && v == value) {
            return;
        }
        let mut packed = String::with_capacity(self.packed.len() + value.len());
        let mut found = false;
        for (k, v) in self.iter() {
            if k == name {
                found = true;
                push(&mut packed, k, value);
            } else {
                push(&mut packed, k, v);
            }
        }
        if !found {
            push(&mut packed, name, value);
        }
        *self = SessionParams::from_packed(packed);
    }

    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// A parameter the server reported: the client's own if it is one the pooler tracks.
    pub fn reported(&mut self, name: &str, value: &str) {
        if TRACKED.contains(&name) {
            self.set(name, value);
        }
    }

    /// Brings the server's session parameters in line with these before the client's work
    /// runs. The error is the server's message, for the client.
    pub async fn bring_in_line(
        &mut self,
        ex: &mut Exchange,
        timeout: Duration,
    ) -> Result<(), String> {
        let wanted = self.fingerprint();
        if ex.conn.params_synced == Some(wanted) {
            return Ok(());
        }
        let mut sql = String::new();
        for (name, value) in self.iter() {
            if ex.conn.params.get(name).map(String::as_str) != Some(value) {
                sql.push_str(&format!("SET {name} = {};", quote_literal(value)));
            }
        }
        if !sql.is_empty() {
            frontend::encode_query(&mut ex.to_server, &sql);
            ex.tracker.sent(b'Q');
            let mut sync = Syncing {
                params: self,
                failure: None,
            };
            let done = ex.drain(Instant::now() + timeout, &mut sync).await;
            if let Some(message) = sync.failure {
                return Err(message);
            }
            if !done || !ex.tracker.idle() {
                return Err("could not apply session parameters".into());
            }
            // Settings the server does not report: remember what we set.
            for (name, value) in self.iter() {
                if !ex.conn.params.contains_key(name) {
                    ex.conn.params.insert(name.to_owned(), value.to_owned());
                }
            }
        }
        ex.conn.params_synced = Some(self.fingerprint());
        Ok(())
    }
}

/// Hears the replies to the pooler's SET: what the server reports, and its first error.
struct Syncing<'a> {
    params: &'a mut SessionParams,
    failure: Option<String>,
}

impl Replies for Syncing<'_> {
    fn parameter(&mut self, name: &str, value: &str) {
        self.params.reported(name, value);
    }

    fn error(&mut self, _code: &[u8], message: &[u8]) -> bool {
        self.failure
            .get_or_insert_with(|| String::from_utf8_lossy(message).into_owned());
        false
    }
}

/// A string literal safe under any standard_conforming_strings setting.
fn quote_literal(value: &str) -> String {
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

/// Names and values never contain NUL: they arrive as C strings on the wire.
fn push(packed: &mut String, name: &str, value: &str) {
    packed.push_str(name);
    packed.push('\0');
    packed.push_str(value);
    packed.push('\0');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_follows_the_values() {
        let mut p = SessionParams::new(vec![
            ("timezone".into(), "UTC".into()),
            ("x".into(), "".into()),
        ]);
        let before = p.fingerprint();
        p.set("timezone", "UTC");
        assert_eq!(p.fingerprint(), before);
        p.set("timezone", "Asia/Tokyo");
        assert_ne!(p.fingerprint(), before);
        p.set("application_name", "web");
        let all: Vec<_> = p.iter().collect();
        assert_eq!(
            all,
            vec![
                ("timezone", "Asia/Tokyo"),
                ("x", ""),
                ("application_name", "web")
            ]
        );
    }

    #[test]
    fn only_tracked_parameters_follow_the_client() {
        let mut p = SessionParams::default();
        p.reported("server_version", "15.0");
        p.reported("timezone", "UTC");
        assert_eq!(p.iter().collect::<Vec<_>>(), vec![("timezone", "UTC")]);
    }

    #[test]
    fn literals_survive_quotes_and_backslashes() {
        assert_eq!(quote_literal("a'b\\c"), "E'a''b\\\\c'");
    }
}
