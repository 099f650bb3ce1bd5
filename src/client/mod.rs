//! One task per client connection: startup and authentication (`login`), then the session
//! loop (`session`) that borrows a server from the pool per transaction or per session.

pub mod cancel;
mod login;
mod params;
mod session;
pub mod statements;

use crate::auth::scram::Verifier;
use crate::cluster::Clusters;
use crate::config::Config;
use crate::metrics::{instance_name, Metrics};
use crate::pool::Pools;
use crate::protocol::backend;
use crate::stream::Stream;
use arc_swap::ArcSwap;
use bytes::BytesMut;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Every database's totals at one moment.
pub type StatsSample = std::collections::BTreeMap<String, crate::metrics::report::Totals>;

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running = 0,
    /// No new clients; transactions in flight may finish, then each client is closed.
    Draining,
    /// Every client is closed now; open transactions are rolled back.
    Closing,
}

/// What every client task shares.
pub struct Context {
    pub config: ArcSwap<Config>,
    pub pools: Arc<Pools>,
    pub clusters: Clusters,
    pub metrics: Arc<Metrics>,
    /// The file the configuration came from, for reloads.
    pub config_path: std::sync::OnceLock<std::path::PathBuf>,
    /// Woken when a reload may have added databases, whose health then needs watching.
    pub topology_changed: tokio::sync::Notify,
    /// Client TLS, when client_tls_sslmode allows it; replaced on reload (new certificates).
    tls: ArcSwap<Option<tokio_rustls::TlsAcceptor>>,
    /// The last two samples of every database's totals, for SHOW STATS averages.
    stats: Mutex<Vec<(std::time::Instant, StatsSample)>>,
    /// Running, or how the process is shutting down. Sessions watch it.
    /// The phase, for tasks that wait for it to change (the accept loop, the admin console);
    /// sessions are woken through their own `Slot::wake` instead.
    pub control: tokio::sync::watch::Sender<Phase>,
    /// `control`'s phase as a number, for lock-free reads.
    phase_now: std::sync::atomic::AtomicU8,
    pub cancels: cancel::Cancels,
    pub statements: statements::Registry,
    clients: AtomicUsize,
    /// Seeds the mock SCRAM salt of unknown users; fixed for the life of the process.
    mock_secret: [u8; 32],
    /// SCRAM verifiers derived from plain-text passwords, keyed by (user, password) so that a
    /// changed password never meets a stale verifier.
    verifiers: Mutex<HashMap<(String, String), Verifier>>,
}

impl Context {
    pub fn new(config: Config) -> Arc<Context> {
        let metrics = Arc::new(Metrics::new(&instance_name(&config.general.instance_name)));
        Arc::new(Context {
            tls: ArcSwap::from_pointee(acceptor(&config)),
            clusters: Clusters::new(&config),
            pools: Arc::new(Pools::new(metrics.clone())),
            metrics,
            cancels: cancel::Cancels::new(config.general.peer_id),
            config: ArcSwap::from_pointee(config),
            statements: statements::Registry::default(),
            clients: AtomicUsize::new(0),
            phase_now: std::sync::atomic::AtomicU8::new(Phase::Running as u8),
            control: tokio::sync::watch::Sender::new(Phase::Running),
            config_path: std::sync::OnceLock::new(),
            stats: Mutex::default(),
            topology_changed: tokio::sync::Notify::new(),
            mock_secret: rand::random(),
            verifiers: Mutex::default(),
        })
    }

    /// Begins shutting down: `fast` closes clients at once instead of letting their
    /// transactions finish. A later call may only hurry it on.
    pub fn shutdown(&self, fast: bool) {
        let to = if fast {
            Phase::Closing
        } else {
            Phase::Draining
        };
        let changed = self.control.send_if_modified(|p| {
            let later = to > *p;
            if later {
                *p = to;
            }
            later
        });
        if changed {
            self.phase_now.store(to as u8, Ordering::Relaxed);
            self.wake_all();
        }
    }

    /// Wakes every session to look at its `killed` flag and the phase (shutdown, KILL,
    /// KILL_CLIENT).
    pub fn wake_all(&self) {
        for (_, slot) in self.cancels.all() {
            slot.wake.notify_one();
        }
    }

    /// The phase, read without a lock (sessions ask at every step).
    pub fn phase(&self) -> Phase {
        match self.phase_now.load(Ordering::Relaxed) {
            0 => Phase::Running,
            1 => Phase::Draining,
            _ => Phase::Closing,
        }
    }

    /// Reads the configuration file again and applies it (SIGHUP, admin RELOAD). A file that
    /// does not load or validate changes nothing; the error is returned and logged.
    pub fn reload(&self) -> Result<(), String> {
        let Some(path) = self.config_path.get() else {
            return Err("pgsluice was started without a configuration file".into());
        };
        match Config::load(path) {
            Ok(config) => {
                self.apply(config);
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "reload refused: the configuration is unchanged");
                Err(e.to_string())
            }
        }
    }

    /// Puts a validated configuration into effect without dropping clients.
    pub fn apply(&self, mut config: Config) {
        let old = self.config.load_full();
        let (o, n) = (&old.general, &mut config.general);
        // Sockets and cancel keys already handed out: these wait for a restart.
        for (key, changed) in [
            ("listen_addr", o.listen_addr != n.listen_addr),
            ("listen_port", o.listen_port != n.listen_port),
            ("http_listen", o.http_listen != n.http_listen),
            ("peer_id", o.peer_id != n.peer_id),
        ] {
            if changed {
                tracing::warn!(key, "changed, but takes effect only at a restart");
            }
        }
        n.listen_addr.clone_from(&o.listen_addr);
        n.listen_port = o.listen_port;
        n.http_listen.clone_from(&o.http_listen);
        n.peer_id = o.peer_id;
        self.clusters.reload(&config);
        self.pools.reload(&config, &self.clusters);
        self.tls.store(Arc::new(acceptor(&config)));
        self.config.store(Arc::new(config));
        self.topology_changed.notify_one();
        tracing::info!("configuration reloaded");
    }

    /// Takes a sample of the totals; run every stats_period.
    pub fn sample_stats(&self) {
        let sample = crate::metrics::report::totals(&self.pools);
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.push((std::time::Instant::now(), sample));
        if stats.len() > 2 {
            stats.remove(0);
        }
    }

    /// The last stats period: its length in seconds, and the totals at its start and end.
    pub fn stats_window(&self) -> Option<(f64, StatsSample, StatsSample)> {
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        match stats.as_slice() {
            [(t0, a), (t1, b)] => Some(((*t1 - *t0).as_secs_f64(), a.clone(), b.clone())),
            _ => None,
        }
    }

    pub fn tls_acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        (**self.tls.load()).clone()
    }

    /// Clients connected right now, logging in included.
    pub fn client_count(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    fn verifier_for(&self, user: &str, password: &str) -> Verifier {
        let key = (user.to_owned(), password.to_owned());
        if let Some(v) = self
            .verifiers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return v.clone();
        }
        // Derived outside the lock: 4096 HMAC rounds should not stall other logins.
        let v = Verifier::generate(password);
        self.verifiers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_insert(v)
            .clone()
    }
}

impl crate::metrics::http::Status for Context {
    fn metrics(&self) -> String {
        self.metrics
            .render(&self.pools, &self.clusters, &self.config.load())
    }

    fn ready(&self) -> Result<(), String> {
        if self.phase() != Phase::Running {
            return Err("shutting down".into());
        }
        if let Some(c) = self.clusters.all().iter().find(|c| c.is_paused()) {
            return Err(format!("database {} is paused", c.database));
        }
        for cluster in self.clusters.all() {
            match cluster.primary_reachable() {
                Some(true) => {}
                Some(false) => {
                    return Err(format!(
                        "database {}: primary {} unreachable",
                        cluster.database, cluster.nodes[0].addr
                    ))
                }
                None => {
                    return Err(format!(
                        "database {}: primary {} not checked yet",
                        cluster.database, cluster.nodes[0].addr
                    ))
                }
            }
        }
        Ok(())
    }
}

/// The client TLS acceptor the configuration asks for. Validation has loaded the files once;
/// if they fail now, TLS is off and the error logged.
fn acceptor(config: &Config) -> Option<tokio_rustls::TlsAcceptor> {
    let g = &config.general;
    if g.client_tls_sslmode == crate::tls::ClientMode::Disable {
        return None;
    }
    match crate::tls::acceptor(&g.client_tls_cert_file, &g.client_tls_key_file) {
        Ok(a) => Some(a),
        Err((key, e)) => {
            tracing::error!(key, error = %e, "client TLS is off");
            None
        }
    }
}

/// Counts a client for max_client_conn for as long as it lives.
struct ClientSlot<'a>(&'a AtomicUsize);

impl Drop for ClientSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sends a FATAL error and closes; used wherever a client must be turned away.
async fn fatal(stream: &mut Stream, code: &str, message: &str) {
    let mut buf = BytesMut::new();
    backend::error_response(&mut buf, "FATAL", code, message);
    let _ = stream.write_all(&buf).await;
    let _ = stream.shutdown().await;
}

/// Serves one client from accept to close.
pub async fn handle(ctx: Arc<Context>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let mut stream = Stream::Plain(stream);
    let config = ctx.config.load_full();
    let _slot = ClientSlot(&ctx.clients);
    if ctx.clients.fetch_add(1, Ordering::Relaxed) >= config.general.max_client_conn {
        tracing::warn!(%peer, "client refused: max_client_conn reached");
        fatal(
            &mut stream,
            crate::protocol::sqlstate::TOO_MANY_CONNECTIONS,
            "no more connections allowed (max_client_conn)",
        )
        .await;
        return;
    }
    let registration = ctx.cancels.register(peer);
    let login = tokio::time::timeout(
        config.general.client_login_timeout.0,
        // Boxed, like the larger steps of a session, so that an idle client keeps only a
        // small future: its size is the largest state it may ever be in.
        Box::pin(login::login(&ctx, &config, &mut stream, &registration)),
    )
    .await;
    let login = match login {
        Ok(Some(login::Login::Pool(login))) => login,
        Ok(Some(login::Login::Console { user, access, buf })) => {
            tracing::info!(%peer, user, pid = registration.process_id, "admin console login");
            // Boxed: ordinary clients should not carry the console's space.
            let reason = Box::pin(crate::admin::run(&ctx, access, &user, &mut stream, buf)).await;
            tracing::info!(%peer, pid = registration.process_id, reason, "admin console logout");
            return;
        }
        Ok(None) => return,
        Err(_) => {
            tracing::info!(%peer, "client login timed out");
            fatal(
                &mut stream,
                crate::protocol::sqlstate::PROTOCOL_VIOLATION,
                "client_login_timeout",
            )
            .await;
            return;
        }
    };
    tracing::info!(%peer, user = %login.user, db = %login.database, pid = registration.process_id, "client login");
    let reason = session::run(&ctx, config, login, &mut stream, &registration).await;
    tracing::info!(%peer, pid = registration.process_id, reason, "client logout");
}
