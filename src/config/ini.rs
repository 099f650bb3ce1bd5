//! PgBouncer's own configuration file as it is: a `pgbouncer.ini` (`[databases]`, `[users]`,
//! `[pgbouncer]`, `%include`) read into the table a pgsluice TOML file gives, so that both are
//! validated by the same code, with a note for every setting that is not carried over.
//!
//! Settings pgsluice has under PgBouncer's name keep it. Each value is typed by the setting
//! it sets: numbers, PgBouncer's booleans (`1`, `yes`, `on`, `true`, …), comma lists for the
//! list settings, and text for the rest (durations in seconds, as in PgBouncer, or with a
//! unit). Where a key came from is kept, so that an error names file, section and key.

use super::{ConfigError, General};
use std::path::Path;

/// PgBouncer's limit on nested `%include`s.
const MAX_INCLUDE_DEPTH: usize = 10;

/// A PgBouncer file, read.
#[derive(Debug, Default)]
pub struct Converted {
    pub table: toml::Table,
    /// What was not carried over: where it was ("file [section] key") and why.
    pub skipped: Vec<(String, String)>,
    /// Each key path of `table` ("listen_port", "databases.app.port") and where it was set.
    origins: Vec<(String, At)>,
    /// `[pgbouncer] unix_socket_dir`, where PgBouncer listens and reaches the server of a
    /// database entry without `host=`; those entries, once the whole file is read.
    unix_socket_dir: Option<String>,
    hostless: Vec<(String, At)>,
}

/// Where a setting was: its file, and "[section] key" in it (kept apart, so that a file name
/// with a space in it stays whole).
#[derive(Debug, Clone)]
struct At {
    file: String,
    place: String,
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.file, self.place)
    }
}

/// Whether `path` holds a PgBouncer file rather than TOML: its name ends in `.ini`, or it has
/// a `[pgbouncer]` section.
pub fn is_ini(path: &Path, text: &str) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("ini"))
        || text.lines().any(|l| l.trim() == "[pgbouncer]")
}

/// Reads the PgBouncer file `file` whose text is `text`, and the files it includes.
pub fn convert(text: &str, file: &str) -> Result<Converted, ConfigError> {
    let mut out = Converted::default();
    let general = match toml::Value::try_from(General::default()) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    let mut section = String::new();
    read(text, file, &general, &mut section, &mut out, 0)?;
    // PgBouncer's own default when the file names none (a distribution's file usually does):
    // it listens there too.
    let dir = out.unix_socket_dir.take().unwrap_or_else(|| {
        out.table.insert("unix_socket_dir".into(), "/tmp".into());
        "/tmp".into()
    });
    for (name, at) in std::mem::take(&mut out.hostless) {
        if !dir.starts_with('/') {
            return Err(key_error(
                &at,
                format!(
                    "no host=, and unix_socket_dir = \"{dir}\" is no directory to find the \
                     server's socket in: give host="
                ),
            ));
        }
        if let Some(toml::Value::Table(entry)) = out
            .table
            .get_mut("databases")
            .and_then(|d| d.get_mut(&name))
        {
            entry.insert("host".into(), dir.clone().into());
        }
    }
    Ok(out)
}

impl Converted {
    /// A validation error about a key of the table, told as where that key was set.
    pub fn locate(&self, e: ConfigError) -> ConfigError {
        let ConfigError::Key { key, message, .. } = &e else {
            return e;
        };
        let best = self
            .origins
            .iter()
            .filter(|(path, _)| key == path || key.starts_with(&format!("{path}.")))
            .max_by_key(|(path, _)| path.len());
        match best {
            Some((_, at)) => ConfigError::Key {
                file: at.file.clone(),
                key: at.place.clone(),
                message: message.clone(),
            },
            None => e,
        }
    }

    /// The same settings as a pgsluice TOML file, with a comment for each one not carried over.
    pub fn to_toml(&self, file: &str) -> String {
        let mut text = format!("# pgsluice configuration converted from {file}\n");
        for (at, why) in &self.skipped {
            text.push_str(&format!("# not carried over: {at}: {why}\n"));
        }
        text.push('\n');
        text.push_str(&toml::to_string(&self.table).unwrap_or_default());
        text
    }

    /// Sets `key` of the table `section` (`databases`, `users`, `peers`) to `value`.
    fn set(&mut self, section: &str, key: &str, value: toml::Value) {
        let table = self
            .table
            .entry(section)
            .or_insert_with(|| toml::Table::new().into());
        if let Some(t) = table.as_table_mut() {
            t.insert(key.to_owned(), value);
        }
    }

    fn skip(&mut self, at: impl std::fmt::Display, why: &str) {
        self.skipped.push((at.to_string(), why.to_owned()));
    }
}

fn read(
    text: &str,
    file: &str,
    general: &toml::Table,
    section: &mut String,
    out: &mut Converted,
    depth: usize,
) -> Result<(), ConfigError> {
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let syntax = |message: String| ConfigError::Syntax {
            file: format!("{file}:{}", n + 1),
            message,
        };
        if let Some(path) = line
            .strip_prefix("%include")
            .filter(|p| p.starts_with([' ', '\t']))
        {
            // As in PgBouncer: the path as written, relative to the working directory.
            let path = path.trim();
            if depth >= MAX_INCLUDE_DEPTH {
                return Err(syntax(format!("%include {path}: nested too deep")));
            }
            let inner = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                file: path.to_owned(),
                source,
            })?;
            read(&inner, path, general, section, out, depth + 1)?;
            continue;
        }
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            let name = name
                .strip_suffix(']')
                .ok_or_else(|| syntax("a section's `]` is missing".into()))?;
            *section = name.trim().to_owned();
            continue;
        }
        let (key, value) = split_key(line).ok_or_else(|| syntax("expected key = value".into()))?;
        let value = strip_comment(value);
        let at = At {
            file: file.to_owned(),
            place: format!("[{section}] {key}"),
        };
        match section.as_str() {
            "pgbouncer" => setting(general, key, value, at, out)?,
            "databases" => database(key, value, at, out)?,
            "users" => user(key, value, at, out)?,
            "peers" => peer(key, value, at, out)?,
            _ => out.skip(at, "pgsluice has no such section"),
        }
    }
    Ok(())
}

/// `key = value`, the key perhaps in single quotes (as PgBouncer allows for odd names).
fn split_key(line: &str) -> Option<(&str, &str)> {
    let (key, rest) = match line.strip_prefix('\'') {
        Some(quoted) => {
            let end = quoted.find('\'')?;
            (&quoted[..end], &quoted[end + 1..])
        }
        None => {
            let end = line
                .find(|c: char| !(c.is_ascii_alphanumeric() || "_.-*".contains(c)))
                .unwrap_or(line.len());
            (&line[..end], &line[end..])
        }
    };
    let value = rest.trim_start().strip_prefix('=')?;
    (!key.is_empty()).then_some((key, value.trim()))
}

/// A comment after the value (` # …` or ` ; …`), which PgBouncer would take as part of it
/// and refuse in a number: guides often write one.
fn strip_comment(value: &str) -> &str {
    let cut = value
        .char_indices()
        .find(|&(i, c)| {
            matches!(c, '#' | ';') && value[..i].ends_with([' ', '\t']) && !in_quotes(&value[..i])
        })
        .map_or(value.len(), |(i, _)| i);
    value[..cut].trim_end()
}

fn in_quotes(s: &str) -> bool {
    s.chars().filter(|&c| c == '\'').count() % 2 == 1
}

/// Why pgsluice does without a PgBouncer setting it lacks.
fn without(key: &str) -> &'static str {
    match key {
        "logfile" | "syslog" | "syslog_ident" | "syslog_facility" | "verbose"
        | "log_connections" | "log_disconnections" | "log_pooler_errors" | "log_stats" => {
            "pgsluice logs to stderr; choose what with RUST_LOG"
        }
        "pidfile" | "user" => "the service manager or container runs pgsluice as it should",
        "ignore_startup_parameters" => {
            "pgsluice accepts every startup parameter and gives each client its own"
        }
        "track_extra_parameters" => "pgsluice tracks every setting a client changes",
        "server_reset_query_always" => {
            "in transaction mode pgsluice cleans a server after a client only when it must"
        }
        _ => "pgsluice has no such setting; it is ignored",
    }
}

fn setting(
    general: &toml::Table,
    key: &str,
    value: &str,
    at: At,
    out: &mut Converted,
) -> Result<(), ConfigError> {
    if key == "unix_socket_dir" {
        out.unix_socket_dir = Some(value.to_owned());
    }
    let Some(like) = general.get(key) else {
        out.skip(at, without(key));
        return Ok(());
    };
    let typed = typed(like, value).map_err(|message| key_error(&at, message))?;
    out.table.insert(key.to_owned(), typed);
    out.origins.push((key.to_owned(), at));
    Ok(())
}

/// `value` as the type of the default `like`.
fn typed(like: &toml::Value, value: &str) -> Result<toml::Value, String> {
    use toml::Value;
    Ok(match like {
        Value::Boolean(_) => Value::Boolean(boolean(value)?),
        Value::Array(_) => Value::Array(
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        ),
        Value::Integer(_) | Value::Float(_) => number(value),
        _ => Value::String(value.to_owned()),
    })
}

fn number(value: &str) -> toml::Value {
    if let Ok(i) = value.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    match value.parse::<f64>() {
        Ok(f) if f.is_finite() => toml::Value::Float(f),
        // Validation says what is wrong with it (a duration with a unit is fine).
        _ => toml::Value::String(value.to_owned()),
    }
}

fn boolean(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "yes" | "on" | "true" => Ok(true),
        "0" | "no" | "off" | "false" => Ok(false),
        _ => Err(format!("\"{value}\" is not a boolean (use 1 or 0)")),
    }
}

fn key_error(at: &At, message: String) -> ConfigError {
    ConfigError::Key {
        file: at.file.clone(),
        key: at.place.clone(),
        message,
    }
}

/// `key=value` pairs of a connection string, a value perhaps in single quotes (`''` inside
/// stands for a quote).
fn pairs(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("\"{rest}\" is not key=value"))?;
        let key = rest[..eq].trim().to_owned();
        let after = rest[eq + 1..].trim_start();
        let (value, tail) = if after.starts_with('\'') {
            super::userlist::quoted(after, '\'')
                .ok_or_else(|| format!("{key}: the quote is not closed"))?
        } else {
            let end = after.find([' ', '\t']).unwrap_or(after.len());
            (after[..end].to_owned(), &after[end..])
        };
        if key.is_empty() || value.is_empty() {
            return Err(format!("\"{}\" has an empty key or value", rest.trim()));
        }
        out.push((key, value));
        rest = tail.trim_start();
    }
    Ok(out)
}

/// Keys of a `[databases]` entry that pgsluice's `[databases.NAME]` has, by the type of
/// their value.
fn database_key(key: &str) -> Option<fn(&str) -> toml::Value> {
    match key {
        "host" | "dbname" | "user" | "password" | "pool_mode" | "auth_user" | "auth_query"
        | "auth_dbname" => Some(|v| toml::Value::String(v.to_owned())),
        "port"
        | "pool_size"
        | "min_pool_size"
        | "max_db_connections"
        | "max_db_client_connections" => Some(number),
        _ => None,
    }
}

/// A `[databases]` entry. A `host` that lists hosts (PgBouncer spreads new connections over
/// them) becomes one database of that many nodes whose roles the health checks find
/// (`role = "auto"`): reads spread over the replicas, writes go to the primary.
fn database(name: &str, value: &str, at: At, out: &mut Converted) -> Result<(), ConfigError> {
    let mut entry = toml::Table::new();
    let mut others = Vec::new();
    for (key, mut v) in pairs(value).map_err(|m| key_error(&at, m))? {
        if key == "host" && v.contains(',') {
            let mut hosts = v.split(',').map(str::trim).filter(|h| !h.is_empty());
            let first = hosts.next().unwrap_or_default().to_owned();
            others.extend(hosts.map(str::to_owned));
            v = first;
        }
        match database_key(&key) {
            Some(to_value) => {
                entry.insert(key.clone(), to_value(&v));
                out.origins
                    .push((format!("databases.{name}.{key}"), at.clone()));
            }
            None => out.skip(format!("{at} ({key})"), database_without(&key)),
        }
    }
    if !entry.contains_key("host") {
        out.hostless.push((name.to_owned(), at.clone()));
    }
    if !others.is_empty() {
        let port = entry.get("port").cloned().unwrap_or(5432.into());
        let replicas = others.into_iter().map(|host| {
            let mut t = toml::Table::new();
            t.insert("host".into(), host.into());
            t.insert("port".into(), port.clone());
            toml::Value::Table(t)
        });
        entry.insert("replicas".into(), toml::Value::Array(replicas.collect()));
        entry.insert("role".into(), "auto".into());
    }
    out.origins.push((format!("databases.{name}"), at));
    out.set("databases", name, entry.into());
    Ok(())
}

/// `[peers]`: `ID = host=… port=…`, as `peers.ID = "host:port"`.
fn peer(id: &str, value: &str, at: At, out: &mut Converted) -> Result<(), ConfigError> {
    let (mut host, mut port) = (None, None);
    for (key, v) in pairs(value).map_err(|m| key_error(&at, m))? {
        match key.as_str() {
            "host" => host = Some(v),
            "port" => port = Some(v),
            _ => out.skip(
                format!("{at} ({key})"),
                "pgsluice needs only host and port of a peer",
            ),
        }
    }
    let host = host.ok_or_else(|| key_error(&at, "a peer needs host=".into()))?;
    let port = port.unwrap_or_else(|| "6432".into());
    let addr = match port.parse() {
        Ok(port) => super::host_port(&host, port),
        // Validation says what is wrong with it.
        Err(_) => format!("{host}:{port}"),
    };
    out.origins.push((format!("peers.{id}"), at));
    out.set("peers", id, addr.into());
    Ok(())
}

fn database_without(key: &str) -> &'static str {
    match key {
        "reserve_pool" | "reserve_pool_size" => "pgsluice has one reserve_pool_size for every pool",
        _ => "pgsluice has no such database setting; it is ignored",
    }
}

fn user(name: &str, value: &str, at: At, out: &mut Converted) -> Result<(), ConfigError> {
    let mut entry = toml::Table::new();
    for (key, v) in pairs(value).map_err(|m| key_error(&at, m))? {
        let typed = match key.as_str() {
            "pool_mode" => toml::Value::String(v),
            "pool_size" | "max_user_connections" | "max_user_client_connections" => number(&v),
            _ => {
                out.skip(
                    format!("{at} ({key})"),
                    "pgsluice has no such user setting; it is ignored",
                );
                continue;
            }
        };
        entry.insert(key.clone(), typed);
        out.origins
            .push((format!("users.{name}.{key}"), at.clone()));
    }
    out.origins.push((format!("users.{name}"), at));
    out.set("users", name, entry.into());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    const SEED: &str = "# /etc/pgbouncer/pgbouncer.ini\n[databases]\n\
        orders = host=db.internal port=5432 dbname=orders max_db_client_connections=40\n\
        'odd-name' = host=127.0.0.1 port=5433 user=app password='it''s' pool_size=5 auth_user=pgb\n\n\
        [users]\nreport = pool_mode=session max_user_connections=3 max_user_client_connections=9\n\n\
        [pgbouncer]\nlisten_addr = *\nlisten_port = 6432\nauth_type = md5\n\
        logfile = /var/log/pgbouncer/pgbouncer.log\n\
        ; Pool sizing\npool_mode = transaction\n\
        max_client_conn = 300  # Total from all app instances\n\
        default_pool_size = 25 ; Actual DB connections\nreserve_pool_size = 5\n\
        query_wait_timeout = 0.5\nadmin_users = alice, bob\npin_session_features = 0\n\
        [peers]\n1 = host=10.0.0.1 port=6432\n2 = host=::1\n";

    fn config(text: &str) -> Result<(Config, Converted), ConfigError> {
        let c = convert(text, "pgb.ini")?;
        let config = Config::from_table(c.table.clone(), "pgb.ini").map_err(|e| c.locate(e))?;
        Ok((config, c))
    }

    #[test]
    fn a_guide_style_file_is_read_as_it_is() {
        let (c, conv) = config(SEED).unwrap();
        let g = &c.general;
        assert_eq!((g.listen_addr.as_str(), g.listen_port), ("*", 6432));
        assert_eq!((g.max_client_conn, g.default_pool_size), (300, 25));
        assert_eq!(g.reserve_pool_size, 5);
        assert_eq!(g.query_wait_timeout.0.as_millis(), 500);
        assert_eq!(g.admin_users, ["alice", "bob"]);
        assert!(!g.pin_session_features);
        let orders = &c.databases["orders"];
        assert_eq!((orders.host.as_str(), orders.port), ("db.internal", 5432));
        assert_eq!(orders.dbname.as_deref(), Some("orders"));
        let odd = &c.databases["odd-name"];
        assert_eq!(odd.password.as_deref(), Some("it's"));
        assert_eq!(odd.pool_size, Some(5));
        assert_eq!(odd.auth_user.as_deref(), Some("pgb"));
        assert_eq!(c.users["report"].max_user_connections, Some(3));
        assert_eq!(c.users["report"].max_user_client_connections, Some(9));
        assert_eq!(c.databases["orders"].max_db_client_connections, Some(40));
        assert_eq!(c.general.peers["1"], "10.0.0.1:6432");
        assert_eq!(c.general.peers["2"], "[::1]:6432");
        let skipped: Vec<&str> = conv.skipped.iter().map(|(at, _)| at.as_str()).collect();
        assert_eq!(skipped, ["pgb.ini [pgbouncer] logfile"]);
    }

    #[test]
    fn errors_name_file_section_and_key() {
        let e = config("[databases]\na = port=x\n[pgbouncer]\n").unwrap_err();
        assert_eq!(e.to_string().split(':').next(), Some("pgb.ini"), "{e}");
        assert!(e.to_string().contains("[databases] a"), "{e}");
        let e = config("[pgbouncer]\ndefault_pool_size = many\n[databases]\na =\n").unwrap_err();
        assert!(
            e.to_string().contains("[pgbouncer] default_pool_size"),
            "{e}"
        );
        let e =
            config("[pgbouncer]\npool_mode = statement\n[databases]\na = port=1\n").unwrap_err();
        assert!(e.to_string().contains("[pgbouncer] pool_mode"), "{e}");
        let e = config("[pgbouncer]\npin_session_features = maybe\n").unwrap_err();
        assert!(
            e.to_string().contains("[pgbouncer] pin_session_features"),
            "{e}"
        );
        let spaced = convert(
            "[pgbouncer]\npin_session_features = maybe\n",
            "my dir/pgb.ini",
        );
        match spaced.unwrap_err() {
            ConfigError::Key { file, key, .. } => {
                assert_eq!(
                    (file.as_str(), key.as_str()),
                    ("my dir/pgb.ini", "[pgbouncer] pin_session_features")
                )
            }
            other => panic!("{other:?}"),
        }
        let e = config("[databases]\na = port=1\n[pgbouncer]\nunix_socket_dir =\n").unwrap_err();
        assert!(e.to_string().contains("[databases] a"), "{e}");
    }

    #[test]
    fn hosts_are_read_as_pgbouncer_reads_them() {
        use crate::config::{ReplicaSpec, ReplicaTable, Roles};
        let text = "[databases]\nsock = host=/var/run/postgresql port=5433\nnone = dbname=x\n\
                    list = host='h1, h2' port=5433\nlist2 = host=h1,h2,h3\n";
        let (c, _) = config(text).unwrap();
        let db = |name: &str| &c.databases[name];
        assert_eq!(db("sock").host, "/var/run/postgresql");
        // No host: the socket in unix_socket_dir, PgBouncer's default unless the file says.
        assert_eq!(db("none").host, "/tmp");
        let (c, _) = config(&format!("{text}[pgbouncer]\nunix_socket_dir = /run/pg\n")).unwrap();
        assert_eq!(c.databases["none"].host, "/run/pg");
        let list = db("list");
        assert_eq!(
            (list.host.as_str(), list.port, list.role),
            ("h1", 5433, Roles::Auto)
        );
        let replica = |host: &str| {
            ReplicaSpec::Table(ReplicaTable {
                host: host.into(),
                port: 5433,
                weight: 1,
            })
        };
        assert_eq!(list.replicas, [replica("h2")]);
        assert_eq!(db("list2").replicas.len(), 2);
    }

    #[test]
    fn the_toml_it_prints_is_the_same_configuration() {
        let (c, conv) = config(SEED).unwrap();
        let text = conv.to_toml("pgb.ini");
        assert!(
            text.contains("# not carried over: pgb.ini [pgbouncer] logfile"),
            "{text}"
        );
        assert_eq!(Config::parse(&text, "converted.toml").unwrap(), c);
    }

    #[test]
    fn includes_are_read_in_place() {
        let dir = std::env::temp_dir().join(format!("pgsluice-ini-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let inner = dir.join("databases.ini");
        std::fs::write(&inner, "[databases]\nb = port=5499\n").unwrap();
        let text = format!(
            "[pgbouncer]\nlisten_port = 7000\n%include {}\n",
            inner.display()
        );
        let (c, _) = config(&text).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(c.databases["b"].port, 5499);
        assert_eq!(c.general.listen_port, 7000);
    }

    #[test]
    fn only_ini_files_are_taken_for_ini() {
        assert!(is_ini(Path::new("/etc/pgbouncer/pgbouncer.ini"), ""));
        assert!(is_ini(Path::new("conf"), "[pgbouncer]\nlisten_port = 1\n"));
        assert!(!is_ini(Path::new("pgsluice.toml"), "[databases.app]\n"));
    }
}
