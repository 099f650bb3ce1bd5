//! What the pooler counts and how it reports it.
//!
//! Hot paths touch only handles resolved once per pool (`stats::PoolMetrics`) or plain atomics
//! (`router::RouteCounters`); gauges of pools, clients and nodes are read from their owners when
//! Prometheus scrapes (see `report`). `http` serves /metrics, /health and /ready.

pub mod http;
pub mod report;

use crate::stats::{counter, PoolFamilies};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use std::sync::Arc;

/// Every metric family of the process, in one registry.
pub struct Metrics {
    pub registry: Registry,
    pub instance: String,
    /// The families pools take their handles from.
    pub pools: Arc<PoolFamilies>,
    pub auth_failures: IntCounterVec,
    pub cancels: IntCounter,
    /// Idle clients waiting without a task of their own (`client::parked`).
    pub parked: IntGauge,
    /// Clients parked so far: against the transactions, how often clients are taken up.
    pub parkings: IntCounter,
    pub(crate) gauges: report::Gauges,
}

pub(crate) fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

/// A counter of the whole process, labelled with its instance only.
fn instance_counter(registry: &Registry, instance: &str, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::with_opts(Opts::new(name, help).const_label("instance", instance))
        .expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

impl Metrics {
    pub fn new(instance: &str) -> Metrics {
        let r = Registry::new();
        Metrics {
            pools: Arc::new(PoolFamilies::new(&r, instance)),
            auth_failures: counter(
                &r,
                "pgsluice_client_auth_failures_total",
                "Client logins refused for a wrong password or an unknown user.",
                &["database", "user", "instance"],
            ),
            cancels: instance_counter(
                &r,
                instance,
                "pgsluice_cancel_requests_total",
                "Cancel requests received from clients.",
            ),
            parked: {
                let g = IntGauge::with_opts(
                    Opts::new(
                        "pgsluice_clients_parked",
                        "Idle clients parked: waiting without a task of their own, taken up \
                         again by their next message.",
                    )
                    .const_label("instance", instance),
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            parkings: instance_counter(
                &r,
                instance,
                "pgsluice_client_parkings_total",
                "Times an idle client was parked (each is taken up again by its next message).",
            ),
            gauges: report::Gauges::new(&r),
            instance: instance.to_owned(),
            registry: r,
        }
    }

    pub fn auth_failed(&self, database: &str, user: &str) {
        self.auth_failures
            .with_label_values(&[database, user, self.instance.as_str()])
            .inc();
    }
}

/// The process's name in the `instance` label: `instance_name`, else the host name.
pub fn instance_name(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_owned();
    }
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "pgsluice".into())
}
