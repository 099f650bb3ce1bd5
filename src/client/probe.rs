//! After work that may have changed its session (`router::effects`): one query of the
//! pooler's, unseen by the client, asks the server what the session has now, once the client
//! has its ReadyForQuery and before the server serves anyone else.
//!
//! In transaction mode, when the transaction is over, it reads the values of the settings the
//! work named (so a SET that failed or was rolled back is never recorded) and which
//! session-only features the session holds (so a client is pinned to its server only while it
//! really holds one). In either mode, after a RESET of a setting the client gave at startup, it
//! puts that startup value back where the RESET left the server's default, as PostgreSQL does
//! for a client of its own.

use super::end::End;
use super::link::Link;
use super::params::quote_literal;
use super::session::Session;
use crate::config::PoolMode;
use crate::protocol::backend::{self, TxStatus};
use crate::router::effects::{Effects, Feature, Features};
use crate::server::exchange::settable;
use crate::server::query::{self, Row};
use std::sync::atomic::Ordering;

/// The query that checks whether the session holds a feature (any row: it does).
fn holds(f: Feature) -> &'static str {
    match f {
        Feature::AdvisoryLock => {
            "SELECT FROM pg_catalog.pg_locks WHERE locktype = 'advisory' \
             AND pid = pg_catalog.pg_backend_pid()"
        }
        Feature::Listen => "SELECT FROM pg_catalog.pg_listening_channels()",
        Feature::TempTable => {
            "SELECT FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()"
        }
        Feature::HoldCursor => "SELECT FROM pg_catalog.pg_cursors WHERE is_holdable",
        Feature::Prepare => "SELECT FROM pg_catalog.pg_prepared_statements WHERE from_sql",
        // Nothing undoes LOAD: a session that ran it holds it for good.
        Feature::Load => "SELECT",
    }
}

/// What one probe asks.
#[derive(Debug, Default, PartialEq, Eq)]
struct Probe {
    sql: String,
    /// The features whose presence it reads.
    features: Features,
    /// Whether it reads the settings' values.
    learns: bool,
}

/// Builds the probe for `fx`: `fix_up` are the startup settings to put back where a RESET
/// left the server's default; with `learn` it reads the named settings (`names`) and the
/// features that may have started or ended (`features`).
fn probe(fix_up: &[(&str, &str)], features: Features, names: &[&str], fx: &Effects) -> Probe {
    let mut sql = String::new();
    let features = features.without(Features::one(Feature::Load));
    if !features.is_empty() {
        let checks: Vec<String> = features
            .iter()
            .map(|f| {
                format!(
                    "SELECT 'p', '{}', NULL WHERE EXISTS ({})",
                    f.name(),
                    holds(f)
                )
            })
            .collect();
        sql.push_str(&checks.join(" UNION ALL "));
        sql.push(';');
    }
    if !fix_up.is_empty() {
        let values: Vec<String> = fix_up
            .iter()
            .map(|(n, v)| format!("({}, {})", quote_literal(n), quote_literal(v)))
            .collect();
        sql.push_str(&format!(
            "SELECT 'x', s.name, pg_catalog.set_config(s.name, v.value, false) \
             FROM (VALUES {}) v(name, value) JOIN pg_catalog.pg_settings s \
             ON pg_catalog.lower(s.name) = v.name WHERE s.source <> 'session';",
            values.join(", ")
        ));
    }
    let learns = !names.is_empty() || fx.unnamed_setting;
    if learns {
        let mut parts = Vec::new();
        if !names.is_empty() {
            let values: Vec<String> = names
                .iter()
                .map(|n| format!("({})", quote_literal(n)))
                .collect();
            parts.push(format!(
                "SELECT 's', v.n, pg_catalog.current_setting(v.n, true) FROM (VALUES {}) v(n)",
                values.join(", ")
            ));
        }
        if fx.unnamed_setting {
            parts.push(
                "SELECT 's', pg_catalog.lower(name), setting FROM pg_catalog.pg_settings \
                 WHERE source = 'session'"
                    .to_owned(),
            );
        }
        sql.push_str(&parts.join(" UNION ALL "));
        sql.push(';');
    }
    Probe {
        sql,
        features,
        learns,
    }
}

impl Session<'_> {
    /// Runs the probe the link's work calls for, if it is due. An Err ends the session: the
    /// server did not answer, and what the client's session has is no longer known.
    pub(super) async fn settle(&mut self, link: &mut Link) -> Result<(), End> {
        let status = link.ex.tracker.status;
        if status == TxStatus::Failed {
            // Rolled back whatever it did; the end of the transaction decides.
            return Ok(());
        }
        let learn = self.mode == PoolMode::Transaction && status == TxStatus::Idle;
        let fx = &link.touched;
        let startup = self.params.startup();
        let fix_up: Vec<(&str, &str)> = startup
            .iter()
            .filter(|(n, _)| fx.reset_all || fx.resets.iter().any(|r| r == n))
            .collect();
        if !learn && fix_up.is_empty() {
            if self.mode == PoolMode::Session {
                link.touched = Effects::default();
            }
            return Ok(());
        }
        let (features, names) = if learn {
            let features = fx.start.union(fx.end.intersection(self.pinned));
            let mut names: Vec<&str> = fx.settings.iter().map(String::as_str).collect();
            if fx.reset_all {
                for (n, _) in self
                    .params
                    .current
                    .iter()
                    .chain(link.ex.conn.session.iter())
                {
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
            }
            (features, names)
        } else {
            (Features::NONE, Vec::new())
        };
        let p = probe(&fix_up, features, &names, fx);
        let load = learn && fx.start.contains(Feature::Load);
        let fixed = !fix_up.is_empty();
        drop(fix_up);
        drop(names);
        if !p.sql.is_empty() {
            let rows = self.run_probe(link, &p.sql).await?;
            if let Some(rows) = rows {
                self.take_rows(link, &p, rows);
            }
        }
        if load {
            self.pin(Features::NONE, Features::one(Feature::Load));
        }
        if learn {
            link.touched = Effects::default();
        } else if fixed {
            link.touched.resets.clear();
            link.touched.reset_all = false;
        }
        Ok(())
    }

    /// Sends the probe and reads its rows; None when a statement of it failed (what it
    /// would have read stays as it was). Parameters the server reports on the way are the
    /// client's, and it hears of them as it would from PostgreSQL.
    async fn run_probe(&mut self, link: &mut Link, sql: &str) -> Result<Option<Vec<Row>>, End> {
        let timeout = self.config.general.server_connect_timeout.0;
        let conn = &mut link.ex.conn;
        let mut reported: Vec<(String, String)> = Vec::new();
        // A notification that reaches the server meanwhile is the client's, after its answer.
        let notes = &mut self.to_client;
        let run = query::several(
            conn,
            sql,
            |n, v| reported.push((n.to_owned(), v.to_owned())),
            Some(notes),
        );
        let result = match tokio::time::timeout(timeout, run).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(End::Params(format!("session state unknown: {e}"))),
            Err(_) => return Err(End::Params("session state unknown: no answer".into())),
        };
        for (name, value) in reported {
            backend::parameter_status(&mut self.to_client, name.as_bytes(), value.as_bytes());
            if settable(&name) {
                link.ex.conn.session.set(&name, &value);
                self.params.reported(&name, &value);
            }
            link.ex.conn.params.insert(name, value);
        }
        Ok(match result {
            (rows, None) => Some(rows),
            (_, Some(e)) => {
                tracing::debug!(error = %e, "session probe failed; keeping what was known");
                None
            }
        })
    }

    /// What the probe read: the settings' values, on both sides, and the features held.
    fn take_rows(&mut self, link: &mut Link, p: &Probe, rows: Vec<Row>) {
        let mut held = Features::NONE;
        for row in rows {
            let [Some(kind), Some(name), value] =
                <[Option<String>; 3]>::try_from(row).unwrap_or([None, None, None])
            else {
                continue;
            };
            match kind.as_str() {
                "s" if p.learns => {
                    self.params.put(&name, value.as_deref());
                    link.ex.conn.session.put(&name, value.as_deref());
                }
                "p" => {
                    if let Some(f) = Feature::ALL.into_iter().find(|f| f.name() == name) {
                        held.insert(f);
                    }
                }
                _ => {}
            }
        }
        if !p.features.is_empty() {
            self.pin(p.features, held);
        }
    }

    /// The probe read `probed` features and found `held` among them: the client is pinned
    /// for as long as it holds any.
    pub(super) fn pin(&mut self, probed: Features, held: Features) {
        let before = self.pinned;
        let now = before.without(probed).union(held);
        if now == before {
            return;
        }
        let pins = &self.members.pins;
        for f in now.iter().filter(|f| !before.contains(*f)) {
            pins.pinned_by(f.name());
            if !self.warned.contains(f) {
                self.warned.insert(f);
                tracing::warn!(
                    db = %self.members.cluster.database,
                    user = %self.members.user,
                    feature = f.name(),
                    "client pinned to its server connection by a session-only feature"
                );
            }
        }
        match (before.is_empty(), now.is_empty()) {
            (true, false) => pins.pinned.inc(),
            (false, true) => pins.pinned.dec(),
            _ => {}
        }
        self.pinned = now;
        self.reg.slot.pinned.store(now.bits(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::effects;

    #[test]
    fn a_plain_set_reads_only_its_setting() {
        let fx = effects::of(b"SET search_path TO a");
        let p = probe(&[], fx.start, &["search_path"], &fx);
        assert_eq!(
            p.sql,
            "SELECT 's', v.n, pg_catalog.current_setting(v.n, true) FROM (VALUES (E'search_path')) v(n);"
        );
        assert!(p.learns && p.features.is_empty());
    }

    #[test]
    fn features_are_read_before_settings_and_load_needs_no_query() {
        let fx = effects::of(b"SELECT pg_advisory_lock(1); LOAD 'x'");
        let p = probe(&[("datestyle", "Postgres, MDY")], fx.start, &[], &fx);
        assert!(p
            .sql
            .starts_with("SELECT 'p', 'advisory_lock', NULL WHERE EXISTS"));
        assert!(p.sql.contains("(VALUES (E'datestyle', E'Postgres, MDY'))"));
        assert!(!p.learns);
        assert_eq!(p.features, Features::one(Feature::AdvisoryLock));
    }
}
