//! Validation of a loaded configuration: every value checked once, at load, with an error that
//! names its key, so that a bad file (at start or at a reload) changes nothing.

use super::{AuthType, ClientMode, Config, ServerMode};
use crate::auth::Secret;
use std::net::IpAddr;

/// The longest path a Unix socket may have (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A file mode as PgBouncer reads one (C's `strtol` with base 0): octal after a leading 0,
/// else decimal.
pub fn file_mode(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let mode = match t.strip_prefix('0') {
        Some("") => Ok(0),
        Some(octal) => u32::from_str_radix(octal, 8),
        None => t.parse(),
    };
    match mode {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!("\"{text}\" is not a file mode such as \"0777\"")),
    }
}

/// An error naming `key`.
fn bad<T>(key: &str, msg: String) -> Result<T, (String, String)> {
    Err((key.to_owned(), msg))
}

impl Config {
    /// Every check a loaded file must pass; the error names the key.
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        self.validate_general()?;
        self.validate_sections()
    }

    fn validate_general(&self) -> Result<(), (String, String)> {
        let g = &self.general;
        if g.listen_addr != "*" && g.listen_addr.parse::<IpAddr>().is_err() {
            return bad(
                "listen_addr",
                format!("\"{}\" is not an IP address or *", g.listen_addr),
            );
        }
        file_mode(&g.unix_socket_mode).or_else(|m| bad("unix_socket_mode", m))?;
        let dir = g.unix_socket_dir.as_str();
        if dir.starts_with('@') {
            let why = "abstract Unix sockets are not supported: give a directory".into();
            return bad("unix_socket_dir", why);
        }
        if !dir.is_empty() && !dir.starts_with('/') {
            return bad(
                "unix_socket_dir",
                format!("\"{dir}\" is not an absolute path"),
            );
        }
        let path = super::socket_path(dir, g.listen_port);
        if !dir.is_empty() && path.len() > MAX_SOCKET_PATH {
            let why = format!("the socket's path {path} is longer than {MAX_SOCKET_PATH} bytes");
            return bad("unix_socket_dir", why);
        }
        if g.default_pool_size == 0 {
            return bad("default_pool_size", "must be at least 1".into());
        }
        if g.max_client_conn == 0 {
            return bad("max_client_conn", "must be at least 1".into());
        }
        if !g.auth_dbname.is_empty() && self.database(&g.auth_dbname).is_none() {
            return bad(
                "auth_dbname",
                format!("names no configured database: {}", g.auth_dbname),
            );
        }
        if !g.auth_query.contains("$1") {
            return bad("auth_query", "must take the user name as $1".into());
        }
        if g.peer_id > 16383 {
            return bad("peer_id", "must be between 0 and 16383".into());
        }
        for (id, addr) in &g.peers {
            let key = format!("peers.{id}");
            if !matches!(id.parse::<u16>(), Ok(1..=16383)) {
                return bad(&key, "a peer_id between 1 and 16383".into());
            }
            if !is_host_port(addr) {
                return bad(&key, format!("\"{addr}\" is not host:port"));
            }
        }
        if !g.peers_dns.is_empty() && !is_host_port(&g.peers_dns) {
            let why = format!("\"{}\" is not host:port", g.peers_dns);
            return bad("peers_dns", why);
        }
        if g.max_packet_size < 1024 {
            return bad("max_packet_size", "must be at least 1024".into());
        }
        let cert_lines = self.hba.as_ref().is_some_and(|h| h.asks_for_certificates());
        if (g.auth_type == AuthType::Cert || cert_lines) && g.client_tls_ca_file.is_empty() {
            let why = "cert authentication needs client_tls_ca_file (and client TLS)".into();
            return bad("client_tls_ca_file", why);
        }
        if g.client_tls_sslmode != ClientMode::Disable {
            crate::tls::acceptor(
                &g.client_tls_cert_file,
                &g.client_tls_key_file,
                &g.client_tls_ca_file,
            )
            .map(drop)
            .or_else(|(key, message)| bad(&key, message))?;
        }
        if matches!(
            g.server_tls_sslmode,
            ServerMode::VerifyCa | ServerMode::VerifyFull
        ) && g.server_tls_ca_file.is_empty()
        {
            return bad(
                "server_tls_ca_file",
                "server_tls_sslmode verify-ca and verify-full need a CA file".into(),
            );
        }
        if g.server_tls_cert_file.is_empty() != g.server_tls_key_file.is_empty() {
            let why = "server_tls_cert_file and server_tls_key_file go together".into();
            return bad("server_tls_key_file", why);
        }
        let checks_files = !g.server_tls_ca_file.is_empty() || !g.server_tls_cert_file.is_empty();
        if g.server_tls_sslmode != ServerMode::Disable && checks_files {
            crate::tls::connector(&g.server_tls())
                .map(drop)
                .or_else(|(key, why)| bad(key, why))?;
        }
        if g.stats_period.0.is_zero() {
            return bad("stats_period", "must be more than 0".into());
        }
        if g.replica_lsn_poll_interval.0.is_zero() {
            return bad("replica_lsn_poll_interval", "must be more than 0".into());
        }
        if g.health_check_interval.0.is_zero() {
            return bad("health_check_interval", "must be more than 0".into());
        }
        if let Some(f) = g.write_functions.iter().find(|f| f.is_empty()) {
            return bad("write_functions", format!("\"{f}\" is not a function name"));
        }
        if !g.http_listen.is_empty() && g.http_listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(
                "http_listen",
                format!(
                    "\"{}\" is not an address:port (or \"\" for none)",
                    g.http_listen
                ),
            );
        }
        Ok(())
    }

    fn validate_sections(&self) -> Result<(), (String, String)> {
        if self.databases.is_empty() {
            return bad(
                "databases",
                "at least one [databases.NAME] section is needed".into(),
            );
        }
        for (name, db) in &self.databases {
            let host = format!("databases.{name}.host");
            if db.host.is_empty() {
                return bad(&host, "must not be empty".into());
            }
            if db.host.contains(',') {
                return bad(
                    &host,
                    "one host: list the others in replicas (with role = \"auto\" when any \
                     of them may be the primary)"
                        .into(),
                );
            }
            if db.host.starts_with('@') {
                return bad(
                    &host,
                    "abstract Unix sockets are not supported: give the socket's directory".into(),
                );
            }
            if db.pool_size == Some(0) {
                return bad(
                    &format!("databases.{name}.pool_size"),
                    "must be at least 1".into(),
                );
            }
            for (i, r) in db.replicas.iter().enumerate() {
                let key = format!("databases.{name}.replicas[{i}]");
                let r = r.resolve().map_err(|m| (key.clone(), m))?;
                if r.host.starts_with('@') {
                    return bad(&key, "abstract Unix sockets are not supported".into());
                }
                if r.weight == 0 {
                    return bad(&format!("{key}.weight"), "must be at least 1".into());
                }
                if r.host == db.host && r.port == db.port {
                    return bad(&key, "is the primary's address".into());
                }
            }
            if let Some(d) = db
                .auth_dbname
                .as_deref()
                .filter(|d| self.database(d).is_none())
            {
                return bad(
                    &format!("databases.{name}.auth_dbname"),
                    format!("names no configured database: {d}"),
                );
            }
            if db.auth_query.as_deref().is_some_and(|q| !q.contains("$1")) {
                return bad(
                    &format!("databases.{name}.auth_query"),
                    "must take the user name as $1".into(),
                );
            }
            if db.password.is_some() && db.user.is_none() {
                return bad(
                    &format!("databases.{name}.password"),
                    "needs `user` as well".into(),
                );
            }
        }
        for (name, user) in &self.users {
            if user.pool_size == Some(0) {
                return bad(
                    &format!("users.{name}.pool_size"),
                    "must be at least 1".into(),
                );
            }
            if let Some(pw) = &user.password {
                Secret::parse(pw).map_err(|m| (format!("users.{name}.password"), m))?;
            }
        }
        Ok(())
    }
}

/// Whether `addr` is a host (not empty) and a port after its last colon.
fn is_host_port(addr: &str) -> bool {
    addr.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}
