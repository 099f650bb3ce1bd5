//! The process-wide context every connection shares: the configuration and its reload, the
//! shutdown phase, readiness, client TLS, stats sampling, the verifier cache, and the
//! registries of clients (`clients`) and prepared statements (`statements`).
//!
//! `client/` and `admin/` both use it; it imports neither of them.

pub mod clients;
pub mod statements;

use crate::auth::scram::Verifier;
use crate::cluster::{Clusters, Reachability};
use crate::config::Config;
use crate::metrics::{instance_name, Metrics};
use crate::pool::Pools;
use crate::router::Routes;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Every database's totals at one moment.
pub type StatsSample = crate::metrics::report::ByDatabase;

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running = 0,
    /// Another process has the port too (so_reuseport) and takes the new clients: this one
    /// accepts none, and its clients go on as before until they leave.
    HandingOver,
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
    pub cancels: clients::Cancels,
    pub statements: statements::Registry,
    /// Secrets auth_query found.
    pub lookups: crate::pool::lookup::Lookups,
    /// Every database's routing decisions, by reason.
    pub routes: Routes,
    /// Every database's functions and statements that write.
    pub catalogs: crate::router::Catalogs,
    /// Woken (all waiters) after each reload.
    pub reloaded: tokio::sync::Notify,
    clients: AtomicUsize,
    /// A coarse clock: quarter seconds since the parking lot began, advanced by it. Idle
    /// sessions stamp their slot with it (`Slot::idle_since`), which costs no clock read.
    pub tick: std::sync::atomic::AtomicU32,
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
            pools: Arc::new(Pools::new(metrics.pools.clone())),
            metrics,
            cancels: clients::Cancels::new(config.general.peer_id),
            config: ArcSwap::from_pointee(config),
            statements: statements::Registry::default(),
            lookups: Default::default(),
            routes: Routes::default(),
            catalogs: crate::router::Catalogs::default(),
            reloaded: tokio::sync::Notify::new(),
            clients: AtomicUsize::new(0),
            tick: std::sync::atomic::AtomicU32::new(1),
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
    /// transactions finish; otherwise, with so_reuseport, the process hands over to the one
    /// that shares its port. A later call may only hurry it on.
    pub fn shutdown(&self, fast: bool) {
        let to = if fast {
            Phase::Closing
        } else if self.config.load().general.so_reuseport {
            Phase::HandingOver
        } else {
            Phase::Draining
        };
        self.enter(to);
    }

    /// Moves on to phase `to`, if it is later than the current one.
    pub fn enter(&self, to: Phase) {
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
            1 => Phase::HandingOver,
            2 => Phase::Draining,
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
        for key in config.keep_restart_keys(&self.config.load()) {
            tracing::warn!(key, "changed, but takes effect only at a restart");
        }
        self.clusters.reload(&config);
        self.pools.reload(&config, &self.clusters);
        self.lookups.clear();
        self.tls.store(Arc::new(acceptor(&config)));
        self.config.store(Arc::new(config));
        self.topology_changed.notify_one();
        self.reloaded.notify_waiters();
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

    /// Counts a new client for max_client_conn; None when the limit is reached. The count
    /// holds for as long as the returned guard lives. Taken as the connection is accepted,
    /// before its task first runs: a shutdown that waits for the clients waits for it too.
    pub fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let guard = Admitted(self.clone());
        let max = self.config.load().general.max_client_conn;
        (self.clients.fetch_add(1, Ordering::Relaxed) < max).then_some(guard)
    }

    /// A made-up verifier for a user that does not exist, the same at every try, so that a
    /// refused login does not tell whether the user exists.
    pub fn mock_verifier(&self, user: &str) -> Verifier {
        crate::auth::scram::mock_verifier(user, &self.mock_secret)
    }

    /// The SCRAM verifier of a plain-text password, derived once per (user, password).
    pub fn verifier_for(&self, user: &str, password: &str) -> Verifier {
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
        self.metrics.render(
            &self.pools,
            &self.clusters,
            &self.routes,
            &self.config.load(),
        )
    }

    fn ready(&self) -> Result<(), String> {
        if self.phase() != Phase::Running {
            return Err("shutting down".into());
        }
        if let Some(c) = self.clusters.all().iter().find(|c| c.is_paused()) {
            return Err(format!("database {} is paused", c.database));
        }
        for cluster in self.clusters.all() {
            if cluster.leader() == crate::cluster::Leader::Contested {
                return Err(format!(
                    "database {}: more than one node claims to be primary",
                    cluster.database
                ));
            }
            match cluster.primary_reachable() {
                Reachability::Reachable => {}
                Reachability::Unreachable => {
                    return Err(format!(
                        "database {}: primary {} unreachable",
                        cluster.database,
                        cluster.nodes[cluster.primary()].addr
                    ))
                }
                Reachability::NotChecked => {
                    return Err(format!(
                        "database {}: primary {} not checked yet",
                        cluster.database,
                        cluster.nodes[cluster.primary()].addr
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
    let (cert, key, ca) = (
        &g.client_tls_cert_file,
        &g.client_tls_key_file,
        &g.client_tls_ca_file,
    );
    match crate::tls::acceptor(cert, key, ca) {
        Ok(a) => Some(a),
        Err((key, e)) => {
            tracing::error!(key, error = %e, "client TLS is off");
            None
        }
    }
}

/// Counts a client for max_client_conn for as long as it lives.
pub struct Admitted(Arc<Context>);

impl Admitted {
    pub fn ctx(&self) -> &Arc<Context> {
        &self.0
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}
