//! The listening socket and the process's long-lived tasks.

use crate::client::{self, Context};
use crate::cluster::health::Checker;
use crate::cluster::Cluster;
use crate::config::Config;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// A bound but not yet serving pooler; tests bind port 0 and read the address back.
pub struct Service {
    pub ctx: Arc<Context>,
    listener: TcpListener,
    http: Option<TcpListener>,
}

impl Service {
    pub async fn bind(config: Config) -> std::io::Result<Service> {
        let host = match config.general.listen_addr.as_str() {
            "*" => "0.0.0.0",
            a => a,
        };
        let listener = TcpListener::bind((host, config.general.listen_port)).await?;
        let http =
            match config.general.http_listen.as_str() {
                "" => None,
                addr => Some(TcpListener::bind(addr).await.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("http_listen {addr}: {e}"))
                })?),
            };
        Ok(Service {
            ctx: Context::new(config),
            listener,
            http,
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

    /// Accepts clients until the future is dropped.
    pub async fn serve(mut self) {
        tracing::info!(addr = %self.local_addr(), "listening");
        let mut background = tokio::task::JoinSet::new();
        if let Some(http) = self.http.take() {
            tracing::info!(addr = %http.local_addr().map(|a| a.to_string()).unwrap_or_default(), "http listening");
            background.spawn(crate::metrics::http::serve(http, self.ctx.clone()));
        }
        background.spawn(self.ctx.pools.clone().maintain_forever());
        for cluster in self.ctx.clusters.all() {
            background.spawn(watch(self.ctx.clone(), cluster));
        }
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    tokio::spawn(client::handle(self.ctx.clone(), stream, peer));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Checks a cluster's nodes every health_check_interval, for as long as the process runs.
async fn watch(ctx: Arc<Context>, cluster: Arc<Cluster>) {
    let mut checker = Checker::default();
    loop {
        let config = ctx.config.load_full();
        for node in checker.tick(&cluster, &config.general).await {
            ctx.pools.drain_node(&cluster.database, node);
        }
        tokio::time::sleep(config.general.health_check_interval.0).await;
    }
}
