//! The one TOML file: schema, defaults and validation.
//!
//! Each default lives here once; `config/pgsluice.toml` documents the same values and a test
//! holds the two together. Loading either yields a fully validated [`Config`] or an error that
//! names the file and the key, so a bad reload can be refused before anything changes.

mod console;
mod duration;
mod files;
pub mod hba;
pub mod ini;
mod reload;
mod replicas;
mod userlist;
mod validate;

pub use console::{Access, CONSOLE_DATABASES};
pub use duration::Seconds;
pub use reload::NEEDS_RESTART;
pub use replicas::{LoadBalance, ReadFromPrimary, Replica, ReplicaSpec, ReplicaTable, Roles};
pub use validate::file_mode;

pub use crate::tls::{ClientMode, ServerMode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    Session,
    Transaction,
}

/// How LISTEN works in transaction mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenMode {
    /// One listening server connection per (database, user) carries every client's channels.
    Shared,
    /// A client that listens keeps its own server (see pin_session_features).
    Pin,
}

/// Whose writes a read must see when it goes to a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadYourWrites {
    /// A client's reads see its own writes.
    Connection,
    /// Every client of a (database, user) sees the writes of all of them.
    Pool,
    /// Reads go to any usable replica.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthType {
    #[serde(rename = "trust")]
    Trust,
    /// md5, or SCRAM where the stored secret is a SCRAM verifier (as PgBouncer does).
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// A TLS client certificate (client_tls_ca_file's) whose common name is the user.
    #[serde(rename = "cert")]
    Cert,
    /// By auth_hba_file, line by line.
    #[serde(rename = "hba")]
    Hba,
}

/// How the secret of a user the configuration does not list is found: `query` with the user
/// name as $1, run as `user` in `database` (a configured database) on its primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthLookup<'a> {
    pub user: &'a str,
    pub query: &'a str,
    pub database: &'a str,
}

/// PgBouncer's auth_query: the secret of a role that may log in, NULL once it has expired.
pub const DEFAULT_AUTH_QUERY: &str = "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin";

/// Process-wide settings: the top level of the file, with PgBouncer's names and meanings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct General {
    pub listen_addr: String,
    pub listen_port: u16,
    /// A directory for a Unix socket `.s.PGSQL.<listen_port>` beside the TCP port (empty: none).
    pub unix_socket_dir: String,
    /// The socket file's permissions, in octal as PgBouncer writes them ("0777").
    pub unix_socket_mode: String,
    /// The socket file's group (empty: the process's).
    pub unix_socket_group: String,
    pub pool_mode: PoolMode,
    pub auth_type: AuthType,
    pub auth_file: String,
    /// The pg_hba.conf-style file of auth_type = "hba".
    pub auth_hba_file: String,
    /// Who looks up the passwords of users the configuration does not list (empty: no one).
    pub auth_user: String,
    pub auth_query: String,
    /// The database auth_query runs in (empty: the client's).
    pub auth_dbname: String,
    pub auth_cache_ttl: Seconds,
    pub max_client_conn: usize,
    pub default_pool_size: usize,
    pub min_pool_size: usize,
    pub reserve_pool_size: usize,
    pub reserve_pool_timeout: Seconds,
    pub max_db_connections: usize,
    pub max_user_connections: usize,
    pub max_db_client_connections: usize,
    pub max_user_client_connections: usize,
    pub query_wait_timeout: Seconds,
    pub server_connect_timeout: Seconds,
    pub server_login_retry: Seconds,
    pub server_idle_timeout: Seconds,
    pub server_lifetime: Seconds,
    pub autodb_idle_timeout: Seconds,
    pub server_reset_query: String,
    pub pin_session_features: bool,
    pub application_name_add_host: bool,
    pub listen_mode: ListenMode,
    pub client_login_timeout: Seconds,
    pub client_idle_timeout: Seconds,
    pub idle_transaction_timeout: Seconds,
    pub query_timeout: Seconds,
    pub transaction_timeout: Seconds,
    pub tcp_keepalive: bool,
    pub tcp_keepcnt: u32,
    pub tcp_keepidle: u64,
    pub tcp_keepintvl: u64,
    pub tcp_user_timeout: u64,
    pub max_packet_size: usize,
    pub max_prepared_statements: usize,
    pub peer_id: u16,
    /// Where the other instances are, by peer_id: a cancel request with a key another
    /// instance gave out is sent on to it.
    pub peers: BTreeMap<String, String>,
    /// host:port resolving to every instance; unmatched cancels go to each (config docs).
    pub peers_dns: String,
    pub so_reuseport: bool,
    /// Threads that run client and server connections (0: one per core).
    pub workers: usize,
    pub server_check_delay: Seconds,
    pub server_check_query: String,
    pub health_check_interval: Seconds,
    pub ban_time: Seconds,
    pub max_replica_lag: Seconds,
    pub max_replica_lag_bytes: u64,
    pub read_your_writes: ReadYourWrites,
    pub replica_lsn_poll_interval: Seconds,
    pub read_your_writes_wait: Seconds,
    pub write_functions: Vec<String>,
    pub catalog_refresh_interval: Seconds,
    pub http_listen: String,
    pub instance_name: String,
    pub metrics_pgbouncer_compat: bool,
    pub shutdown_timeout: Seconds,
    pub admin_users: Vec<String>,
    pub stats_users: Vec<String>,
    pub stats_period: Seconds,
    pub client_tls_sslmode: ClientMode,
    pub client_tls_cert_file: String,
    pub client_tls_key_file: String,
    pub client_tls_ca_file: String,
    pub server_tls_sslmode: ServerMode,
    pub server_tls_ca_file: String,
    pub server_tls_cert_file: String,
    pub server_tls_key_file: String,
}

impl Default for General {
    fn default() -> Self {
        General {
            listen_addr: "127.0.0.1".into(),
            listen_port: 6432,
            unix_socket_dir: String::new(),
            unix_socket_mode: "0777".into(),
            unix_socket_group: String::new(),
            pool_mode: PoolMode::Transaction,
            auth_type: AuthType::Md5,
            auth_file: String::new(),
            auth_hba_file: String::new(),
            auth_user: String::new(),
            auth_query: DEFAULT_AUTH_QUERY.into(),
            auth_dbname: String::new(),
            auth_cache_ttl: Seconds::secs(60),
            max_client_conn: 100,
            default_pool_size: 20,
            min_pool_size: 0,
            reserve_pool_size: 0,
            reserve_pool_timeout: Seconds::secs(5),
            max_db_connections: 0,
            max_user_connections: 0,
            max_db_client_connections: 0,
            max_user_client_connections: 0,
            query_wait_timeout: Seconds::secs(120),
            server_connect_timeout: Seconds::secs(15),
            server_login_retry: Seconds::secs(15),
            server_idle_timeout: Seconds::secs(600),
            server_lifetime: Seconds::secs(3600),
            autodb_idle_timeout: Seconds::secs(3600),
            server_reset_query: "DISCARD ALL".into(),
            pin_session_features: true,
            application_name_add_host: false,
            listen_mode: ListenMode::Shared,
            client_login_timeout: Seconds::secs(60),
            client_idle_timeout: Seconds::secs(0),
            idle_transaction_timeout: Seconds::secs(0),
            query_timeout: Seconds::secs(0),
            transaction_timeout: Seconds::secs(0),
            tcp_keepalive: true,
            tcp_keepcnt: 0,
            tcp_keepidle: 0,
            tcp_keepintvl: 0,
            tcp_user_timeout: 0,
            max_packet_size: 1_073_741_823,
            max_prepared_statements: 200,
            peer_id: 0,
            peers: BTreeMap::new(),
            peers_dns: String::new(),
            so_reuseport: false,
            workers: 1,
            server_check_delay: Seconds::secs(30),
            server_check_query: "select 1".into(),
            health_check_interval: Seconds::secs(5),
            ban_time: Seconds::secs(60),
            max_replica_lag: Seconds::secs(0),
            max_replica_lag_bytes: 0,
            read_your_writes: ReadYourWrites::Connection,
            replica_lsn_poll_interval: Seconds(std::time::Duration::from_millis(20)),
            read_your_writes_wait: Seconds(std::time::Duration::from_millis(10)),
            write_functions: Vec::new(),
            catalog_refresh_interval: Seconds::secs(60),
            http_listen: "127.0.0.1:9930".into(),
            instance_name: String::new(),
            metrics_pgbouncer_compat: false,
            shutdown_timeout: Seconds::secs(20),
            admin_users: Vec::new(),
            stats_users: Vec::new(),
            stats_period: Seconds::secs(60),
            client_tls_sslmode: ClientMode::Disable,
            client_tls_cert_file: String::new(),
            client_tls_key_file: String::new(),
            client_tls_ca_file: String::new(),
            server_tls_sslmode: ServerMode::Prefer,
            server_tls_ca_file: String::new(),
            server_tls_cert_file: String::new(),
            server_tls_key_file: String::new(),
        }
    }
}

impl General {
    /// How server connections ask for TLS.
    pub fn server_tls(&self) -> crate::tls::ServerTls {
        crate::tls::ServerTls {
            mode: self.server_tls_sslmode,
            ca_file: self.server_tls_ca_file.clone(),
            cert_file: self.server_tls_cert_file.clone(),
            key_file: self.server_tls_key_file.clone(),
        }
    }
}

/// `[databases.NAME]`: where the primary is and how to log in to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Name of the database on the server; defaults to the section name.
    pub dbname: Option<String>,
    /// Server login used for every client of this database instead of the client's own.
    pub user: Option<String>,
    pub password: Option<String>,
    pub pool_size: Option<usize>,
    pub min_pool_size: Option<usize>,
    pub pool_mode: Option<PoolMode>,
    /// Overrides max_db_connections for this database.
    pub max_db_connections: Option<usize>,
    /// Overrides max_db_client_connections for this database.
    pub max_db_client_connections: Option<usize>,
    /// Streaming replicas that serve reads.
    #[serde(default)]
    pub replicas: Vec<ReplicaSpec>,
    #[serde(default)]
    pub read_from_primary: ReadFromPrimary,
    #[serde(default)]
    pub load_balance: LoadBalance,
    /// Which node is the primary: `host`, or whichever the health checks find.
    #[serde(default)]
    pub role: Roles,
    /// Override the process-wide auth_user, auth_query and auth_dbname for this database.
    pub auth_user: Option<String>,
    pub auth_query: Option<String>,
    pub auth_dbname: Option<String>,
}

fn default_host() -> String {
    "127.0.0.1".into()
}

fn default_port() -> u16 {
    5432
}

/// `[users.NAME]`: a client login.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Plain text, an `md5…` hash or a `SCRAM-SHA-256$…` verifier.
    pub password: Option<String>,
    pub pool_size: Option<usize>,
    pub pool_mode: Option<PoolMode>,
    /// Overrides max_user_connections for this user.
    pub max_user_connections: Option<usize>,
    /// Overrides max_user_client_connections for this user.
    pub max_user_client_connections: Option<usize>,
}

/// `host:port` as logs, metrics and socket addresses write it: an IPv6 host in brackets.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The Unix socket of port `port` in directory `dir`, named as PostgreSQL and libpq name it.
pub fn socket_path(dir: &str, port: u16) -> String {
    format!("{}/.s.PGSQL.{port}", dir.trim_end_matches('/'))
}

/// The name of the fallback database section: it serves clients of any database not listed.
pub const FALLBACK: &str = "*";

/// A loaded and validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub general: General,
    pub databases: BTreeMap<String, Database>,
    pub users: BTreeMap<String, User>,
    /// auth_hba_file's lines, read with the file (auth_type = "hba").
    pub hba: Option<std::sync::Arc<hba::Hba>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: key `{key}`: {message}")]
    Key {
        file: String,
        key: String,
        message: String,
    },
}

/// The effective settings of one (database, user) pool, resolved once when the pool is made.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    pub pool_mode: PoolMode,
    pub pool_size: usize,
    pub min_pool_size: usize,
}

impl Database {
    /// The replicas, resolved (validation has checked that each entry resolves).
    pub fn replica_list(&self) -> Vec<Replica> {
        self.replicas
            .iter()
            .filter_map(|r| r.resolve().ok())
            .collect()
    }
}

impl Config {
    /// Loads a pgsluice TOML file or a PgBouncer INI file (`ini::is_ini`); what an INI file
    /// has that pgsluice does not carry over is logged, one warning per setting.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let (config, skipped) = Config::read(path)?;
        for (at, why) in skipped {
            tracing::warn!("{at}: not carried over: {why}");
        }
        Ok(config)
    }

    /// `load`, with the INI settings not carried over returned (where, why) rather than logged.
    pub fn read(path: &Path) -> Result<(Config, Vec<(String, String)>), ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        if !ini::is_ini(path, &text) {
            return Ok((Config::parse(&text, &file)?, Vec::new()));
        }
        let converted = ini::convert(&text, &file)?;
        let config =
            Config::from_table(converted.table.clone(), &file).map_err(|e| converted.locate(e))?;
        Ok((config, converted.skipped))
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    file: file.into(),
                    message: e.to_string().trim_end().to_owned(),
                })?;
        Config::from_table(table, file)
    }

    /// A configuration from the table of a TOML file (or of a converted INI file).
    pub fn from_table(mut table: toml::Table, file: &str) -> Result<Config, ConfigError> {
        let databases = table
            .remove("databases")
            .unwrap_or_else(|| toml::Table::new().into());
        let users = table
            .remove("users")
            .unwrap_or_else(|| toml::Table::new().into());
        let key_err = |prefix: &str, e: serde_path_to_error::Error<toml::de::Error>| {
            let path = e.path().to_string();
            ConfigError::Key {
                file: file.into(),
                key: match (prefix, path.as_str()) {
                    (p, ".") => p.to_owned(),
                    ("", p) => p.to_owned(),
                    (pre, p) => format!("{pre}.{p}"),
                },
                message: e.into_inner().message().to_owned(),
            }
        };
        let general: General = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| key_err("", e))?;
        let databases: BTreeMap<String, Database> =
            serde_path_to_error::deserialize(databases).map_err(|e| key_err("databases", e))?;
        let users: BTreeMap<String, User> =
            serde_path_to_error::deserialize(users).map_err(|e| key_err("users", e))?;
        let mut config = Config {
            general,
            databases,
            users,
            hba: None,
        };
        config
            .read_auth_file()
            .map_err(|message| ConfigError::Key {
                file: file.into(),
                key: "auth_file".into(),
                message,
            })?;
        config.read_hba_file().map_err(|message| ConfigError::Key {
            file: file.into(),
            key: "auth_hba_file".into(),
            message,
        })?;
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Key {
                file: file.into(),
                key,
                message,
            })?;
        Ok(config)
    }

    /// The settings of `database`: its own section, or else the fallback `[databases."*"]`
    /// (PgBouncer's `*`), which serves any name with that name on the server.
    pub fn database(&self, database: &str) -> Option<&Database> {
        if database == FALLBACK {
            return None;
        }
        self.databases
            .get(database)
            .or_else(|| self.databases.get(FALLBACK))
    }

    /// Server connections allowed for a database across all its pools (0 = no limit).
    pub fn max_db_connections(&self, database: &str) -> usize {
        let db = self.database(database).and_then(|d| d.max_db_connections);
        db.unwrap_or(self.general.max_db_connections)
    }

    /// Clients allowed to be connected to a database at once (0 = no limit).
    pub fn max_db_client_connections(&self, database: &str) -> usize {
        let db = self
            .database(database)
            .and_then(|d| d.max_db_client_connections);
        db.unwrap_or(self.general.max_db_client_connections)
    }

    /// Clients allowed to be connected as a user at once, to any database (0 = no limit).
    pub fn max_user_client_connections(&self, user: &str) -> usize {
        let u = self
            .users
            .get(user)
            .and_then(|u| u.max_user_client_connections);
        u.unwrap_or(self.general.max_user_client_connections)
    }

    /// Server connections allowed for a user across all its pools (0 = no limit).
    pub fn max_user_connections(&self, user: &str) -> usize {
        let u = self.users.get(user).and_then(|u| u.max_user_connections);
        u.unwrap_or(self.general.max_user_connections)
    }

    /// The secret configured for `user` (in [users] or auth_file), if it has one.
    pub fn user_secret(&self, user: &str) -> Option<crate::auth::Secret> {
        let password = self.users.get(user)?.password.as_deref()?;
        crate::auth::Secret::parse(password).ok()
    }

    /// Who looks up the secrets of unlisted users for clients of `database`, and how; None
    /// when no auth_user is set for it.
    pub fn auth_lookup<'a>(&'a self, database: &'a str) -> Option<AuthLookup<'a>> {
        let db = self.database(database)?;
        let g = &self.general;
        let user = db.auth_user.as_deref().unwrap_or(&g.auth_user);
        if user.is_empty() {
            return None;
        }
        let dbname = db
            .auth_dbname
            .as_deref()
            .or((!g.auth_dbname.is_empty()).then_some(g.auth_dbname.as_str()))
            .filter(|d| !d.is_empty())
            .unwrap_or(database);
        Some(AuthLookup {
            user,
            query: db.auth_query.as_deref().unwrap_or(&g.auth_query),
            database: dbname,
        })
    }

    /// Resolves one pool's settings: the database's value wins over the user's, which wins over
    /// the global default (PgBouncer's order for pool_size and pool_mode).
    pub fn pool_settings(&self, database: &str, user: &str) -> Option<PoolSettings> {
        let db = self.database(database)?;
        let u = self.users.get(user);
        let g = &self.general;
        Some(PoolSettings {
            pool_mode: db
                .pool_mode
                .or_else(|| u.and_then(|u| u.pool_mode))
                .unwrap_or(g.pool_mode),
            pool_size: db
                .pool_size
                .or_else(|| u.and_then(|u| u.pool_size))
                .unwrap_or(g.default_pool_size),
            min_pool_size: db.min_pool_size.unwrap_or(g.min_pool_size),
        })
    }
}

#[cfg(test)]
mod tests;
