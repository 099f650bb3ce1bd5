//! Startup and login of a client: SSL/GSS refusal, cancel requests, protocol version
//! negotiation, authentication (`authenticate`), and the welcome (parameters, cancel key, ready).

use super::authenticate::authenticate;
use crate::cluster::Lsn;
use crate::config::{Access, Config, CONSOLE_DATABASES};
use crate::context::clients::{CancelTarget, LoginNames, Registration};
use crate::context::Context;
use crate::pool::{InState, Members};
use crate::protocol::backend::{self, TxStatus};
use crate::protocol::sqlstate;
use crate::protocol::startup::{self, Startup, StartupPacket};
use crate::protocol::ProtocolError;
use crate::router::command;
use crate::router::policy::RouteMode;
use crate::stream::Stream;
use bytes::BytesMut;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct LoggedIn {
    pub user: String,
    pub database: String,
    pub members: Arc<Members>,
    /// Counts it as connected (max_db_client_connections, max_user_client_connections).
    pub connected: InState,
    /// Where the client asked its work to go (`options=-c pgsluice.route=...`).
    pub route: RouteMode,
    /// The read-your-writes floor it starts with (`options=-c pgsluice.min_lsn=...`).
    pub floor: Lsn,
    /// The session parameters this client wants, lowercase names: the pool's server defaults
    /// for the tracked ones, overridden by the startup packet and its `options`.
    pub params: Vec<(String, String)>,
    /// Bytes the client sent after its startup packet, already read.
    pub buf: BytesMut,
}

pub(super) async fn read_more(stream: &mut Stream, buf: &mut BytesMut) -> bool {
    buf.reserve(512);
    matches!(stream.read_buf(buf).await, Ok(n) if n > 0)
}

pub(super) async fn protocol_violation(stream: &mut Stream, e: ProtocolError) {
    stream
        .fatal(&[], sqlstate::PROTOCOL_VIOLATION, &e.to_string())
        .await;
}

/// A client logged in: to a database's pools, or to the admin console.
pub enum Login {
    Pool(LoggedIn),
    Console {
        user: String,
        access: crate::config::Access,
        buf: BytesMut,
    },
}

/// The admin console's login: the same authentication, then admin_users or stats_users; or,
/// on the Unix socket, pgsluice's own user as `pgsluice` (or `pgbouncer`).
async fn console_login(
    ctx: &Context,
    config: &Config,
    stream: &mut Stream,
    mut buf: BytesMut,
    mut out: BytesMut,
    (asked, user): (&str, String),
    reg: &Registration,
) -> Option<Login> {
    let database = "pgsluice";
    // As PgBouncer lets its own user in: no password asked of a process of the user pgsluice
    // runs as, on the Unix socket, that logs in by the console's name.
    let own = CONSOLE_DATABASES.contains(&user.as_str()) && stream.peer_is_own_user();
    let bufs = (&mut buf, &mut out);
    let client = (asked, reg.slot.peer);
    if !own
        && authenticate(ctx, config, stream, bufs, client, None, &user)
            .await
            .is_none()
    {
        ctx.metrics.auth_failed(database, &user);
        return None;
    }
    let access = match own {
        true => Some(Access::Admin),
        false => config.console_access(&user),
    };
    let Some(access) = access else {
        stream
            .fatal(
                &out,
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "not allowed: the admin console is for admin_users and stats_users",
            )
            .await;
        return None;
    };
    let _ = reg.slot.login.set(LoginNames::new(database, &user));
    backend::authentication_ok(&mut out);
    let version = format!("15.0 (pgsluice {})", env!("CARGO_PKG_VERSION"));
    for (name, value) in [
        ("server_version", version.as_str()),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("TimeZone", "UTC"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", ""),
    ] {
        backend::parameter_status(&mut out, name.as_bytes(), value.as_bytes());
    }
    backend::backend_key_data(&mut out, reg.process_id, reg.slot.secret());
    backend::ready_for_query(&mut out, TxStatus::Idle);
    stream.write_all(&out).await.ok()?;
    Some(Login::Console { user, access, buf })
}

/// Runs the login; `None` when the connection ended (cancel request, error already sent, EOF).
pub async fn login(
    ctx: &Context,
    config: &Config,
    stream: &mut Stream,
    reg: &Registration,
) -> Option<Login> {
    let mut buf = BytesMut::new();
    let startup = read_startup(ctx, config, stream, &mut buf).await?;
    let Some(user) = startup
        .get("user")
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
    else {
        stream
            .fatal(
                &[],
                sqlstate::INVALID_AUTHORIZATION,
                "no PostgreSQL user name specified in startup packet",
            )
            .await;
        return None;
    };
    let database = startup
        .get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user)
        .to_owned();
    let mut wanted = match client_params(&startup) {
        Ok(p) => p,
        Err(msg) => {
            stream.fatal(&[], sqlstate::PROTOCOL_VIOLATION, &msg).await;
            return None;
        }
    };
    // The pooler's own settings: they pick the route and the read-your-writes floor, and
    // never reach a server.
    let mut take = |name: &str| {
        let i = wanted.iter().position(|(k, _)| k == name)?;
        Some(wanted.remove(i).1)
    };
    let route = take("pgsluice.route")
        .map(|v| command::route(&v))
        .transpose();
    let floor = take("pgsluice.min_lsn")
        .map(|v| command::min_lsn(&v))
        .transpose();
    let (route, floor) = match (route, floor) {
        (Ok(route), Ok(floor)) => (route.unwrap_or_default(), floor.unwrap_or_default()),
        (Err(e), _) | (_, Err(e)) => {
            stream
                .fatal(&[], sqlstate::INVALID_PARAMETER_VALUE, &e.to_string())
                .await;
            return None;
        }
    };
    let mut out = BytesMut::new();
    let unsupported: Vec<&str> = startup
        .params
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| k.starts_with("_pq_."))
        .collect();
    if startup.minor > 0 || !unsupported.is_empty() {
        backend::negotiate_protocol_version(&mut out, 0, &unsupported);
    }
    if config.is_console(&database) {
        return console_login(ctx, config, stream, buf, out, (&database, user), reg).await;
    }
    let asked = Asked {
        user,
        database,
        route,
        floor,
        wanted,
    };
    pool_login(ctx, config, stream, buf, out, asked, reg).await
}

/// What a client's startup packet asks for.
struct Asked {
    user: String,
    database: String,
    route: RouteMode,
    floor: Lsn,
    /// Its session parameters, `options` expanded.
    wanted: Vec<(String, String)>,
}

/// Delivers a client's cancel request to the server running its work; then, in the
/// background, sends it again a few times at growing intervals while that server still runs
/// the same unit. PostgreSQL drops a cancel that reaches a backend before it has read the
/// query: on one server a client's cancel can hardly come that early, but through a pool its
/// query may reach the server just after the cancel does. The client's request connection
/// closes after the first delivery, as PostgreSQL's does.
async fn forward_cancel(
    on_its_way: crate::server::Cancelling,
    answered: u64,
    slot: std::sync::Arc<crate::context::clients::Slot>,
) {
    let key = on_its_way.key().clone();
    if let Err(e) = crate::server::cancel(&key).await {
        tracing::warn!(error = %e, "cancel request to server failed");
        return;
    }
    tokio::spawn(async move {
        let mut wait = std::time::Duration::from_millis(200);
        for _ in 0..3 {
            tokio::time::sleep(wait).await;
            wait *= 2;
            let Some(again) = slot.again(&key, answered) else {
                return;
            };
            tracing::info!(
                server = key.process_id,
                "the query still runs: cancel request sent again"
            );
            if crate::server::cancel(again.key()).await.is_err() {
                return;
            }
        }
    });
}

/// Sends on a cancel request whose key matches no client here (a load balancer sent it to
/// this instance): to the peer `peers` names for the key's peer_id, as PgBouncer's peers do,
/// or else to every instance `peers_dns` resolves to, where only the one whose client has that
/// key acts on it; dropped when neither applies. A key with this instance's own peer_id goes to
/// `peers_dns` too: instances found by DNS may share a peer_id.
async fn to_peer(ctx: &Context, general: &crate::config::General, key: (i32, i32), ours: bool) {
    let (process_id, secret_key) = key;
    let peer = crate::context::clients::Cancels::issuer(process_id);
    if let Some(addr) = general.peers.get(&peer.to_string()).filter(|_| !ours) {
        tracing::info!(peer, %addr, "cancel request sent on to its peer");
        let packet = crate::protocol::startup::cancel_request(process_id, secret_key, false);
        if let Err(e) = crate::server::send_cancel(addr, &packet).await {
            tracing::warn!(peer, error = %e, "cancel request to peer failed");
        }
        return;
    }
    if general.peers_dns.is_empty() {
        if !ours {
            tracing::info!(peer, "cancel request for an unknown peer dropped");
        }
        return;
    }
    let now = (crate::stats::unix_micros() / 1_000_000) as u32;
    if !ctx.cancels.may_fan_out(now) {
        let most = crate::context::clients::FAN_OUTS_PER_SECOND;
        tracing::warn!(
            peer,
            most,
            "cancel request dropped: more than peers_dns takes a second"
        );
        return;
    }
    let found = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::lookup_host(general.peers_dns.as_str()),
    )
    .await;
    let addrs: Vec<std::net::SocketAddr> = match found {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(e)) => {
            tracing::warn!(peer, name = %general.peers_dns, error = %e, "peers_dns lookup failed");
            return;
        }
        Err(_) => {
            tracing::warn!(peer, name = %general.peers_dns, "peers_dns lookup timed out");
            return;
        }
    };
    tracing::info!(
        peer,
        instances = addrs.len(),
        "cancel request sent on to the instances of peers_dns"
    );
    let packet = crate::protocol::startup::cancel_request(process_id, secret_key, true);
    // One after another: a handful of instances, each answering in a round trip.
    for addr in addrs {
        if let Err(e) = crate::server::send_cancel(&addr.to_string(), &packet).await {
            tracing::warn!(peer, %addr, error = %e, "cancel request to an instance failed");
        }
    }
}

/// Reads the startup packet, answering SSL and GSS requests and forwarding a cancel request
/// on the way. `None` when the connection ended.
async fn read_startup(
    ctx: &Context,
    config: &Config,
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Option<Startup> {
    loop {
        match startup::decode(buf) {
            Ok(None) => {
                if !read_more(stream, buf).await {
                    return None;
                }
            }
            // Over a Unix socket, as PostgreSQL does: no TLS, and none required.
            Ok(Some(StartupPacket::Ssl)) if !stream.is_tls() && !stream.is_unix() => {
                // A client that pipelined bytes after the request is broken or malicious
                // (and would smuggle them past the handshake).
                if !buf.is_empty() {
                    return None;
                }
                let acceptor = ctx.tls_acceptor();
                let answer: &[u8] = if acceptor.is_some() { b"S" } else { b"N" };
                stream.write_all(answer).await.ok()?;
                if let Some(acceptor) = acceptor {
                    let tcp = stream.take_plain()?;
                    match acceptor.accept(tcp).await {
                        Ok(tls) => {
                            *stream = Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(tls)))
                        }
                        Err(e) => {
                            tracing::info!(error = %e, "client TLS handshake failed");
                            return None;
                        }
                    }
                }
            }
            Ok(Some(StartupPacket::Ssl | StartupPacket::GssEnc)) => {
                // No GSS encryption, and no TLS inside TLS: 'N' tells the client to go on.
                if !buf.is_empty() || stream.write_all(b"N").await.is_err() {
                    return None;
                }
            }
            Ok(Some(StartupPacket::Cancel {
                process_id,
                secret_key,
                from_peer,
            })) => {
                ctx.metrics.cancels.inc();
                match ctx.cancels.cancel(process_id, secret_key) {
                    Some(CancelTarget::Server(on_its_way, answered, slot)) => {
                        tracing::info!(pid = process_id, "forwarding cancel request");
                        forward_cancel(on_its_way, answered, slot).await;
                    }
                    Some(CancelTarget::Session) => {
                        tracing::info!(
                            pid = process_id,
                            "cancel request for a client without a server"
                        );
                    }
                    // Sent on once at most: a peer's request that matches no client here is
                    // dropped, so requests never go round.
                    None if from_peer => {}
                    None => {
                        let ours = ctx.cancels.ours(process_id);
                        to_peer(ctx, &config.general, (process_id, secret_key), ours).await;
                    }
                }
                return None;
            }
            Ok(Some(StartupPacket::Startup(s))) => {
                if config.general.client_tls_sslmode == crate::tls::ClientMode::Require
                    && !stream.is_tls()
                    && !stream.is_unix()
                {
                    stream
                        .fatal(&[], sqlstate::INVALID_AUTHORIZATION, "SSL required")
                        .await;
                    return None;
                }
                return Some(s);
            }
            Err(e) => {
                protocol_violation(stream, e).await;
                return None;
            }
        }
    }
}

/// A client of a pooled database: authentication, its pools, and the welcome (the server's
/// parameters with the client's own applied, the cancel key, ReadyForQuery).
async fn pool_login(
    ctx: &Context,
    config: &Config,
    stream: &mut Stream,
    mut buf: BytesMut,
    mut out: BytesMut,
    asked: Asked,
    reg: &Registration,
) -> Option<Login> {
    let Asked {
        user,
        database,
        route,
        floor,
        mut wanted,
    } = asked;
    if config.general.application_name_add_host {
        add_host(&mut wanted, reg.slot.peer);
    }
    if config.database(&database).is_none() {
        stream
            .fatal(
                &out,
                sqlstate::INVALID_CATALOG_NAME,
                &format!("no such database: {database}"),
            )
            .await;
        return None;
    }
    let Some(looked) = authenticate(
        ctx,
        config,
        stream,
        (&mut buf, &mut out),
        (&database, reg.slot.peer),
        Some(&database),
        &user,
    )
    .await
    else {
        ctx.metrics.auth_failed(&database, &user);
        return None;
    };
    backend::authentication_ok(&mut out);
    let members =
        ctx.pools
            .members_for(config, &ctx.clusters, &database, &user, looked.as_ref())?;
    if members.cluster.is_disabled() {
        stream
            .fatal(
                &out,
                sqlstate::CONNECTION_FAILURE,
                &format!("database does not allow connections: {database}"),
            )
            .await;
        return None;
    }
    let connected = match members.connect(config) {
        Ok(connected) => connected,
        Err(full) => {
            let message = format!("client connections exceeded ({})", full.setting());
            tracing::info!(db = %database, user, limit = full.setting(), "client refused");
            stream
                .fatal(&out, sqlstate::TOO_MANY_CONNECTIONS, &message)
                .await;
            return None;
        }
    };
    let _ = reg.slot.login.set(LoginNames::new(&database, &user));
    let pool = members.primary();
    let server_params = match pool.server_params() {
        Some(p) => p,
        None => match pool.checkout().await {
            Ok(c) => {
                pool.release(c.conn, true);
                pool.server_params()?
            }
            Err(e) => {
                stream
                    .fatal(&out, sqlstate::CONNECTION_FAILURE, &e.to_string())
                    .await;
                return None;
            }
        },
    };
    // What the client sees: the server's parameters, with its own wishes applied on top.
    for (name, value) in server_params.iter() {
        let lower = name.to_ascii_lowercase();
        let value = wanted
            .iter()
            .find(|(k, _)| *k == lower)
            .map_or(value.as_str(), |(_, v)| v.as_str());
        backend::parameter_status(&mut out, name.as_bytes(), value.as_bytes());
    }
    // The client's settings are its wishes; everything else is the server's default.
    let params = wanted;
    backend::backend_key_data(&mut out, reg.process_id, reg.slot.secret());
    backend::ready_for_query(&mut out, TxStatus::Idle);
    stream.write_all(&out).await.ok()?;
    Some(Login::Pool(LoggedIn {
        user,
        database,
        members,
        connected,
        route,
        floor,
        params,
        buf,
    }))
}

/// application_name_add_host: the client's address after its application_name ("app" if it
/// gave none), as PgBouncer writes it: `psql - 10.0.0.7:51234`, `psql - unix(4321@host):6432`.
fn add_host(wanted: &mut Vec<(String, String)>, peer: crate::context::clients::Peer) {
    use crate::context::clients::Peer;
    let at = match peer {
        Peer::Tcp(addr) => addr.to_string(),
        Peer::Unix { port, pid: 0 } => format!("unix:{port}"),
        Peer::Unix { port, pid } => format!("unix({pid}@{}):{port}", host_name()),
    };
    match wanted.iter_mut().find(|(k, _)| k == "application_name") {
        Some((_, name)) => *name = format!("{name} - {at}"),
        None => wanted.push(("application_name".into(), format!("app - {at}"))),
    }
}

/// This host's name, read once.
fn host_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|n| n.trim().to_owned())
            .unwrap_or_default()
    })
}

/// The startup parameters that become session settings, with `options` expanded.
fn client_params(startup: &Startup) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut push = |k: &str, v: &str| {
        let k = k.to_ascii_lowercase();
        if !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        {
            return Err(format!("invalid startup parameter name \"{k}\""));
        }
        out.retain(|(o, _)| *o != k);
        out.push((k, v.to_owned()));
        Ok(())
    };
    for (k, v) in &startup.params {
        match k.as_str() {
            "user" | "database" => {}
            "replication" if !matches!(v.as_str(), "false" | "off" | "no" | "0") => {
                return Err("replication connections are not supported".into());
            }
            "replication" => {}
            "options" => {
                for (k, v) in startup::parse_options(v)? {
                    push(&k, &v)?;
                }
            }
            k if k.starts_with("_pq_.") => {}
            k => push(k, v)?,
        }
    }
    Ok(out)
}
