//! The admin console: the virtual database `pgsluice` (also `pgbouncer`, for tools made for
//! PgBouncer). Users in `admin_users` run every command; users in `stats_users` only SHOW.
//! It speaks the simple query protocol; each command lives in a file of its own.

mod disable;
mod kill;
mod pause;
mod reconnect;
mod reload;
mod show_clients;
mod show_config;
mod show_databases;
mod show_lists;
mod show_nodes;
mod show_pools;
mod show_servers;
mod show_stats;
mod show_users;
mod show_version;
mod shutdown;
mod table;

use crate::config::Access;
use crate::context::{Context, Phase};
use crate::protocol::backend::{self, TxStatus};
use crate::protocol::{frontend, sqlstate};
use crate::stream::Stream;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use table::{Cell, Kind, Table};

/// A command's outcome: an error goes to the client as ERROR with this SQLSTATE.
pub struct Failure {
    pub code: &'static str,
    pub message: String,
}

impl Failure {
    pub fn new(code: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    pub fn no_database(name: &str) -> Failure {
        Failure::new(
            sqlstate::INVALID_CATALOG_NAME,
            format!("no such database: {name}"),
        )
    }
}

type Outcome = Result<(), Failure>;

/// The console for one client.
pub struct Console<'a> {
    pub ctx: &'a Context,
    pub access: Access,
    pub user: &'a str,
    /// Set by SHUTDOWN: the console closes after its answer.
    closing: bool,
}

/// Serves one console client until it leaves.
pub async fn run(
    ctx: &Context,
    access: Access,
    user: &str,
    stream: &mut Stream,
    mut buf: BytesMut,
) -> &'static str {
    let mut console = Console {
        ctx,
        access,
        user,
        closing: false,
    };
    let mut control = ctx.control.subscribe();
    let max = ctx.config.load().general.max_packet_size;
    loop {
        let header = match frontend::header(&buf, max) {
            Ok(h) => h,
            Err(e) => return fatal(stream, sqlstate::PROTOCOL_VIOLATION, &e.to_string()).await,
        };
        let Some(h) = header.filter(|h| buf.len() >= h.len) else {
            buf.reserve(4096);
            let read = tokio::select! {
                r = stream.read_buf(&mut buf) => Some(r),
                // A process handing over (so_reuseport) keeps its console sessions too.
                _ = control.wait_for(|p| *p >= Phase::Draining) => None,
            };
            match read {
                Some(Ok(n)) if n > 0 => continue,
                Some(_) => return "client disconnected",
                None => {
                    return fatal(
                        stream,
                        sqlstate::ADMIN_SHUTDOWN,
                        "terminating connection due to administrator command",
                    )
                    .await;
                }
            }
        };
        let frame = buf.split_to(h.len).freeze();
        match h.tag {
            b'Q' => {
                let sql = match frontend::parse(b'Q', &frame[5..]) {
                    Ok(frontend::Message::Query(q)) => String::from_utf8_lossy(q).into_owned(),
                    _ => {
                        return fatal(stream, sqlstate::PROTOCOL_VIOLATION, "malformed Query").await
                    }
                };
                let mut out = BytesMut::new();
                console.query(&sql, &mut out).await;
                backend::ready_for_query(&mut out, TxStatus::Idle);
                if stream.write_all(&out).await.is_err() {
                    return "client disconnected";
                }
                if console.closing {
                    return fatal(
                        stream,
                        sqlstate::ADMIN_SHUTDOWN,
                        "terminating connection due to administrator command",
                    )
                    .await;
                }
            }
            b'X' => return "client terminated",
            _ => {
                return fatal(
                    stream,
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "the admin console speaks the simple query protocol only",
                )
                .await
            }
        }
    }
}

async fn fatal(stream: &mut Stream, code: &str, message: &str) -> &'static str {
    stream.fatal(&[], code, message).await;
    "admin console closed"
}

impl Console<'_> {
    /// Runs each `;`-separated command of a Query; the first error ends the Query.
    async fn query(&mut self, sql: &str, out: &mut BytesMut) {
        let commands: Vec<&str> = sql
            .split(';')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        if commands.is_empty() {
            out.extend_from_slice(&[b'I', 0, 0, 0, 4]); // EmptyQueryResponse
            return;
        }
        for command in commands {
            tracing::info!(user = self.user, command, "admin command");
            if let Err(f) = self.command(command, out).await {
                backend::error_response(out, "ERROR", f.code, &f.message);
                return;
            }
        }
    }

    async fn command(&mut self, command: &str, out: &mut BytesMut) -> Outcome {
        let words: Vec<&str> = command.split_whitespace().collect();
        let verb = words[0].to_ascii_uppercase();
        let arg = words.get(1).map(|w| w.trim_matches('"'));
        if verb == "SHOW" {
            let Some(what) = arg else {
                return Err(Failure::new(sqlstate::SYNTAX_ERROR, "SHOW needs a subject"));
            };
            return self.show(&what.to_ascii_uppercase(), out);
        }
        if verb == "SET" {
            // Drivers set things at connect (extra_float_digits and the like): accept them.
            backend::command_complete(out, "SET");
            return Ok(());
        }
        if self.access != Access::Admin {
            return Err(Failure::new(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "admin access needed: the user is in stats_users, not admin_users",
            ));
        }
        match verb.as_str() {
            "PAUSE" => pause::pause(self, arg).await?,
            "RESUME" => pause::resume(self, arg)?,
            "RELOAD" => reload::run(self)?,
            "KILL" => kill::kill(self, arg)?,
            "KILL_CLIENT" => kill::kill_client(self, arg)?,
            "DISABLE" => disable::run(self, arg, true)?,
            "ENABLE" => disable::run(self, arg, false)?,
            "RECONNECT" => reconnect::run(self, arg)?,
            "SHUTDOWN" => {
                shutdown::run(self, arg)?;
                self.closing = true;
            }
            _ => {
                return Err(Failure::new(
                    sqlstate::SYNTAX_ERROR,
                    format!("invalid command: {command}"),
                ))
            }
        }
        backend::command_complete(out, &verb);
        Ok(())
    }

    fn show(&self, what: &str, out: &mut BytesMut) -> Outcome {
        let table = match what {
            "POOLS" => show_pools::table(self.ctx),
            "STATS" => show_stats::table(self.ctx, show_stats::Which::Both),
            "STATS_TOTALS" => show_stats::table(self.ctx, show_stats::Which::Totals),
            "STATS_AVERAGES" => show_stats::table(self.ctx, show_stats::Which::Averages),
            "CLIENTS" => show_clients::table(self.ctx),
            "SERVERS" => show_servers::table(self.ctx),
            "DATABASES" => show_databases::table(self.ctx),
            "USERS" => show_users::table(self.ctx),
            "CONFIG" => show_config::table(self.ctx),
            "LISTS" => show_lists::table(self.ctx),
            "VERSION" => show_version::table(),
            "NODES" => show_nodes::table(self.ctx),
            _ => {
                return Err(Failure::new(
                    sqlstate::SYNTAX_ERROR,
                    format!("invalid SHOW subject: {what}"),
                ))
            }
        };
        table.write(out, "SHOW");
        Ok(())
    }

    /// The cluster of the database a command names.
    fn cluster(
        &self,
        db: Option<&str>,
    ) -> Result<std::sync::Arc<crate::cluster::Cluster>, Failure> {
        let name =
            db.ok_or_else(|| Failure::new(sqlstate::SYNTAX_ERROR, "a database name is needed"))?;
        self.ctx
            .clusters
            .get(name)
            .ok_or_else(|| Failure::no_database(name))
    }

    /// The clusters a command names: one database, or all of them when none is given.
    fn clusters(
        &self,
        db: Option<&str>,
    ) -> Result<Vec<std::sync::Arc<crate::cluster::Cluster>>, Failure> {
        match db {
            None => Ok(self.ctx.clusters.all()),
            Some(name) => self
                .ctx
                .clusters
                .get(name)
                .map(|c| vec![c])
                .ok_or_else(|| Failure::no_database(name)),
        }
    }
}

/// The columns SHOW CLIENTS and SHOW SERVERS share, as PgBouncer names them.
pub const CONNECTION_COLUMNS: [(&str, Kind); 18] = [
    ("type", Kind::Text),
    ("user", Kind::Text),
    ("database", Kind::Text),
    ("state", Kind::Text),
    ("addr", Kind::Text),
    ("port", Kind::Int),
    ("local_addr", Kind::Text),
    ("local_port", Kind::Int),
    ("connect_time", Kind::Text),
    ("request_time", Kind::Text),
    ("wait", Kind::Int),
    ("wait_us", Kind::Int),
    ("close_needed", Kind::Int),
    ("ptr", Kind::Text),
    ("link", Kind::Text),
    ("remote_pid", Kind::Int),
    ("tls", Kind::Text),
    ("application_name", Kind::Text),
];

/// Unix microseconds as PgBouncer prints times: `2026-11-24 14:20:05 UTC`.
pub fn timestamp(micros: u64) -> String {
    let secs = micros / 1_000_000;
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_are_utc_dates() {
        assert_eq!(super::timestamp(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            super::timestamp(1_795_530_005_000_000),
            "2026-11-24 14:20:05 UTC"
        );
        assert_eq!(
            super::timestamp(951_782_400_000_000),
            "2000-02-29 00:00:00 UTC"
        );
    }
}
