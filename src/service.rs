//! The listening socket, the process's long-lived tasks, and what each accepted connection
//! becomes: a pooled client session or an admin console.

use crate::client::{self, login::Login, parked::Lot};
use crate::cluster::catalog;
use crate::cluster::health::Checker;
use crate::cluster::replay::Follower;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::context::clients::Peer;
use crate::context::{Context, Phase};
use crate::listen::{Existing, SocketFile};
use crate::protocol::sqlstate;
use crate::router::WriteFunctions;
use crate::stream::Stream;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// A bound but not yet serving pooler; tests bind port 0 and read the address back.
pub struct Service {
    pub ctx: Arc<Context>,
    listener: TcpListener,
    /// The port bound (listen_port, or the one listen_port 0 got).
    port: u16,
    /// The Unix socket in unix_socket_dir, if one is configured.
    unix: Option<SocketFile>,
    http: Option<TcpListener>,
    /// Where idle clients wait without a task, and the epoll it watches.
    lot: Arc<Lot>,
    lot_poll: Option<mio::Poll>,
}

impl Service {
    pub async fn bind(config: Config) -> std::io::Result<Service> {
        let host = match config.general.listen_addr.as_str() {
            "*" => "0.0.0.0",
            a => a,
        };
        let reuse = config.general.so_reuseport;
        let addr = crate::config::host_port(host, config.general.listen_port);
        let listener = crate::listen::tcp(&addr, reuse).await?;
        let port = listener.local_addr()?.port();
        let unix = match config.general.unix_socket_dir.as_str() {
            "" => None,
            // Named for the port bound (listen_port 0 takes any).
            dir => Some(unix_socket(dir, port, &config)?),
        };
        let http =
            match config.general.http_listen.as_str() {
                "" => None,
                addr => Some(crate::listen::tcp(addr, reuse).await.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("http_listen {addr}: {e}"))
                })?),
            };
        let ctx = Context::new(config);
        let (lot, lot_poll) = Lot::new(ctx.clone())?;
        Ok(Service {
            ctx,
            listener,
            port,
            unix,
            http,
            lot,
            lot_poll: Some(lot_poll),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The HTTP listener's address (/metrics, /health, /ready), if there is one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Accepts clients until shutdown begins (`Context::shutdown`), then stops accepting,
    /// lets clients finish as the shutdown asks, and returns once they are gone.
    pub async fn serve(mut self) {
        tracing::info!(addr = %self.local_addr(), "listening");
        if let Some(unix) = &self.unix {
            tracing::info!(path = %unix.path().display(), "listening");
        }
        let mut background = tokio::task::JoinSet::new();
        if let Some(http) = self.http.take() {
            tracing::info!(addr = %http.local_addr().map(|a| a.to_string()).unwrap_or_default(), "http listening");
            background.spawn(crate::metrics::http::serve(http, self.ctx.clone()));
        }
        background.spawn(self.ctx.pools.clone().maintain_forever());
        background.spawn(supervise(self.ctx.clone()));
        background.spawn(sample_stats(self.ctx.clone()));
        background.spawn(forget_idle_databases(self.ctx.clone()));
        if let Some(poll) = self.lot_poll.take() {
            background.spawn(self.lot.clone().watch(poll));
        }
        let mut control = self.ctx.control.subscribe();
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a.map(|(tcp, peer)| (Stream::Plain(tcp), Peer::Tcp(peer))),
                a = accept_unix(self.unix.as_ref()) => a.map(|unix| {
                    let peer = unix_peer(self.port, &unix);
                    (Stream::Unix(unix), peer)
                }),
                _ = control.wait_for(|p| *p != Phase::Running) => break,
            };
            match accepted {
                Ok((stream, peer)) => serve_client(&self.ctx, &self.lot, stream, peer),
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let handing_over = self.ctx.phase() == Phase::HandingOver;
        if handing_over {
            // Connections already queued on this socket are this process's to serve: closing
            // it would reset them. The other process takes every later one.
            while let Ok(Ok((stream, peer))) =
                tokio::time::timeout(Duration::ZERO, self.listener.accept()).await
            {
                serve_client(&self.ctx, &self.lot, Stream::Plain(stream), Peer::Tcp(peer));
            }
        }
        // New clients are refused from here on; /ready already says 503. The port is closed
        // right after its last accept: one that came in between would be reset.
        drop(self.listener);
        if handing_over {
            while let Ok(Ok(unix)) =
                tokio::time::timeout(Duration::ZERO, accept_unix(self.unix.as_ref())).await
            {
                let peer = unix_peer(self.port, &unix);
                serve_client(&self.ctx, &self.lot, Stream::Unix(unix), peer);
            }
        }
        drop(self.unix.take());
        let timeout = self.ctx.config.load().general.shutdown_timeout.0;
        tracing::info!(clients = self.ctx.client_count(), ?timeout, "shutting down");
        let gone = |ctx: &Context| ctx.client_count() == 0;
        if tokio::time::timeout(timeout, wait_until(&self.ctx, gone))
            .await
            .is_err()
        {
            tracing::warn!(
                clients = self.ctx.client_count(),
                "shutdown_timeout reached: closing the remaining clients"
            );
            self.ctx.shutdown(true);
        }
        // Closing rolls back and cleans up, which has its own bound per client.
        let _ = tokio::time::timeout(Duration::from_secs(15), wait_until(&self.ctx, gone)).await;
        tracing::info!("shut down");
    }
}

/// A client on the Unix socket named for `port`, and its process id if the kernel tells it.
fn unix_peer(port: u16, unix: &tokio::net::UnixStream) -> Peer {
    let pid = unix.peer_cred().ok().and_then(|c| c.pid());
    Peer::Unix {
        port,
        pid: pid.map_or(0, |p| p.unsigned_abs()),
    }
}

/// A new connection: counted for max_client_conn, then served by a task of its own.
fn serve_client(ctx: &Arc<Context>, lot: &Arc<Lot>, stream: Stream, peer: Peer) {
    let admitted = ctx.admit();
    tokio::spawn(handle(ctx.clone(), lot.clone(), stream, peer, admitted));
}

/// Serves one client from accept to close. An idle client's memory is mostly this future
/// (its size is the largest state it may ever be in), so everything before the session runs
/// is boxed and gone once the client is logged in.
async fn handle(
    ctx: Arc<Context>,
    lot: Arc<Lot>,
    mut stream: Stream,
    peer: Peer,
    admitted: Option<crate::context::Admitted>,
) {
    let config = ctx.config.load_full();
    if let Some(tcp) = stream.tcp() {
        let _ = tcp.set_nodelay(true);
        crate::stream::tune(tcp, &crate::server::tcp_tuning(&config.general));
    }
    let Some(admitted) = admitted else {
        tracing::warn!(%peer, "client refused: max_client_conn reached");
        let message = "no more connections allowed (max_client_conn)";
        Box::pin(stream.fatal(&[], sqlstate::TOO_MANY_CONNECTIONS, message)).await;
        return;
    };
    let registration = ctx.cancels.register(peer);
    let session = {
        let Some(login) = Box::pin(log_in(&ctx, &config, &mut stream, peer, &registration)).await
        else {
            return;
        };
        tracing::info!(%peer, user = %login.user, db = %login.database, pid = registration.process_id, "client login");
        let client = client::session::Client {
            stream,
            reg: registration,
            admitted,
        };
        // The box goes at the end of this block, not the session's.
        client::session::run(lot, client, config, *login)
    };
    session.await;
}

/// The client's login, within client_login_timeout: a pool's client comes back logged in
/// (boxed: a value in place would keep its space in `handle`'s future for the whole
/// session, though it moves into the session at once); an admin console's runs here to its
/// end.
async fn log_in(
    ctx: &Context,
    config: &Config,
    stream: &mut Stream,
    peer: Peer,
    registration: &crate::context::clients::Registration,
) -> Option<Box<client::login::LoggedIn>> {
    let login = tokio::time::timeout(
        config.general.client_login_timeout.0,
        Box::pin(client::login::login(ctx, config, stream, registration)),
    )
    .await;
    match login {
        Ok(Some(Login::Pool(login))) => Some(Box::new(login)),
        Ok(Some(Login::Console { user, access, buf })) => {
            tracing::info!(%peer, user, pid = registration.process_id, "admin console login");
            // Boxed: the console's steps are larger than a login's.
            let reason = Box::pin(crate::admin::run(ctx, access, &user, stream, buf)).await;
            tracing::info!(%peer, pid = registration.process_id, reason, "admin console logout");
            None
        }
        Ok(None) => None,
        Err(_) => {
            tracing::info!(%peer, "client login timed out");
            let message = "client_login_timeout";
            stream
                .fatal(&[], sqlstate::PROTOCOL_VIOLATION, message)
                .await;
            None
        }
    }
}

/// Listens on the Unix socket in `dir` for `port`, as the configuration says; under
/// so_reuseport a live socket there is taken over (a handover), else it is an error.
fn unix_socket(dir: &str, port: u16, config: &Config) -> std::io::Result<SocketFile> {
    let g = &config.general;
    let invalid = |e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let mode = crate::config::file_mode(&g.unix_socket_mode).map_err(invalid)?;
    let existing = match g.so_reuseport {
        true => Existing::TakeOver,
        false => Existing::Refuse,
    };
    SocketFile::bind(dir, port, mode, &g.unix_socket_group, existing)
        .map_err(|e| std::io::Error::new(e.kind(), format!("unix_socket_dir {dir}: {e}")))
}

/// The next client on the Unix socket; with none configured, never.
async fn accept_unix(unix: Option<&SocketFile>) -> std::io::Result<tokio::net::UnixStream> {
    match unix {
        Some(unix) => unix.accept().await,
        None => std::future::pending().await,
    }
}

async fn wait_until(ctx: &Context, done: impl Fn(&Context) -> bool) {
    while !done(ctx) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Samples the totals every stats_period, for the averages of SHOW STATS.
async fn sample_stats(ctx: Arc<Context>) {
    loop {
        ctx.sample_stats();
        let period = ctx.config.load().general.stats_period.0;
        tokio::time::sleep(period).await;
    }
}

/// Forgets a database the fallback `*` section served once no client has used it for
/// autodb_idle_timeout: its pools go, with their idle servers, and its health checks.
async fn forget_idle_databases(ctx: Arc<Context>) {
    let mut unused_since: std::collections::HashMap<String, std::time::Instant> =
        Default::default();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let config = ctx.config.load_full();
        let timeout = config.general.autodb_idle_timeout.0;
        let served = match timeout.is_zero() {
            true => Vec::new(),
            false => ctx.clusters.fallback_served(&config),
        };
        unused_since.retain(|db, _| served.iter().any(|c| &c.database == db));
        let now = std::time::Instant::now();
        for cluster in served {
            let db = &cluster.database;
            // A paused database is kept, as in PgBouncer: RESUME expects it.
            if cluster.is_paused() || !ctx.pools.unused(db) {
                unused_since.remove(db);
                continue;
            }
            let since = *unused_since.entry(db.clone()).or_insert(now);
            if now.duration_since(since) >= timeout {
                tracing::info!(db = %db, "database forgotten (autodb_idle_timeout)");
                ctx.clusters.forget(db);
                ctx.pools.forget_database(db, "autodb_idle_timeout");
                unused_since.remove(db);
                ctx.topology_changed.notify_one();
            }
        }
    }
}

/// Keeps one health watcher per cluster, also across reloads that add or replace clusters.
async fn supervise(ctx: Arc<Context>) {
    let mut watchers: Vec<(Arc<Cluster>, tokio::task::JoinHandle<()>)> = Vec::new();
    loop {
        let current = ctx.clusters.all();
        watchers.retain(|(c, task)| {
            let live = current.iter().any(|n| Arc::ptr_eq(n, c));
            if !live {
                task.abort();
            }
            live
        });
        for cluster in current {
            if !watchers.iter().any(|(c, _)| Arc::ptr_eq(c, &cluster)) {
                let (c, n) = (ctx.clone(), cluster.clone());
                let task = tokio::spawn(async move {
                    tokio::join!(
                        watch(c.clone(), n.clone()),
                        follow(c.clone(), n.clone()),
                        read_catalog(c, n)
                    );
                });
                watchers.push((cluster, task));
            }
        }
        tokio::select! {
            _ = ctx.topology_changed.notified() => {}
            _ = ctx.clusters.added.notified() => {}
        }
    }
}

/// Polls a cluster's replicas' replay positions, for as long as it is configured.
async fn follow(ctx: Arc<Context>, cluster: Arc<Cluster>) {
    if !cluster.has_replicas() {
        return;
    }
    let mut follower = Follower::default();
    loop {
        let config = ctx.config.load_full();
        follower.poll(&cluster, &config.general).await;
        follower.wait(&cluster, &config.general).await;
    }
}

/// Reads which user functions write, and the sequences, from the primary's catalog: at start, after each reload
/// and every catalog_refresh_interval, for as long as the cluster is configured. Until a read
/// succeeds, it is tried again every health_check_interval.
async fn read_catalog(ctx: Arc<Context>, cluster: Arc<Cluster>) {
    if !cluster.has_replicas() {
        return;
    }
    let catalog = ctx.catalogs.of(&cluster.database);
    let mut reader = catalog::Reader::default();
    loop {
        let reloaded = ctx.reloaded.notified();
        tokio::pin!(reloaded);
        reloaded.as_mut().enable();
        let known = cluster.credentials_known.notified();
        tokio::pin!(known);
        known.as_mut().enable();
        let config = ctx.config.load_full();
        let general = &config.general;
        let read = reader.names(&cluster, general).await;
        let wait = match &read {
            Some(names) => {
                let configured = general.write_functions.iter().map(String::as_str);
                let volatile = names.volatile_functions.iter().map(String::as_str);
                let functions = WriteFunctions::new(configured.chain(volatile))
                    .with_sequences(names.sequences.iter().map(String::as_str));
                tracing::debug!(db = %cluster.database, functions = functions.len(), sequences = functions.sequences(), "write functions and sequences read from the catalog");
                catalog.set_functions(functions);
                general.catalog_refresh_interval.enabled()
            }
            None => {
                // The configured ones count meanwhile.
                if catalog.functions().is_empty() {
                    let configured = general.write_functions.iter().map(String::as_str);
                    catalog.set_functions(WriteFunctions::new(configured));
                }
                // Again soon, or as soon as a client's login makes one possible.
                let wait = general.health_check_interval.0;
                let _ = tokio::time::timeout(wait, async {
                    tokio::select! { _ = reloaded => {}, _ = known => {} }
                })
                .await;
                continue;
            }
        };
        match wait {
            Some(wait) => {
                let _ = tokio::time::timeout(wait, reloaded).await;
            }
            None => reloaded.await,
        }
    }
}

/// Checks a cluster's nodes every health_check_interval, for as long as it is configured.
async fn watch(ctx: Arc<Context>, cluster: Arc<Cluster>) {
    let mut checker = Checker::default();
    loop {
        let config = ctx.config.load_full();
        for node in checker.tick(&cluster, &config.general).await {
            ctx.pools.drain_node(&cluster.database, node);
        }
        // A ban that runs out before the next round is checked when it does: a node back
        // from a crash gets reads at once, not up to an interval later.
        let interval = config.general.health_check_interval.0;
        let wait = cluster
            .next_ban_end()
            .map_or(interval, |end| end.min(interval));
        tokio::time::sleep(wait).await;
    }
}
