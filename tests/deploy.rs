//! The deployment files: every configuration they carry passes `pgsluice check`, and the
//! Grafana dashboard asks only for metrics pgsluice serves. (Building and running the image
//! needs Docker, which CI does not have.)

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn check(path: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgsluice"))
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn configurations_in_the_image_compose_and_kubernetes_pass_check() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("COPY deploy/docker/pgsluice.toml /etc/pgsluice/pgsluice.toml"));
    assert!(dockerfile.contains("USER pgsluice") && dockerfile.contains("HEALTHCHECK"));
    check(&root().join("deploy/docker/pgsluice.toml"));
    check(&root().join("deploy/compose/pgsluice-1.toml"));
    check(&root().join("deploy/compose/pgsluice-2.toml"));

    // The ConfigMap's file, taken out of its YAML block.
    let yaml = std::fs::read_to_string(root().join("deploy/kubernetes/configmap.yaml")).unwrap();
    let (_, block) = yaml.split_once("pgsluice.toml: |\n").unwrap();
    let toml: String = block
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l.trim_start()))
        .map(|l| format!("{l}\n"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("configmap.toml");
    std::fs::write(&path, toml).unwrap();
    check(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_uses_metrics_that_exist() {
    let dashboard = std::fs::read_to_string(root().join("deploy/grafana/pgsluice.json")).unwrap();
    let pg = support::Replicated::start();
    let pooler = pg.pooler("", "");
    let client = support::connect(&pooler, "app", support::APP_PASSWORD).await;
    client.simple_query("SELECT 1").await.unwrap();
    let mut s = std::net::TcpStream::connect(pooler.http.unwrap()).unwrap();
    use std::io::{Read, Write};
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut metrics = String::new();
    s.read_to_string(&mut metrics).unwrap();
    let mut names: Vec<&str> = dashboard
        .match_indices("pgsluice_")
        .map(|(i, _)| {
            let rest = &dashboard[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() > 10, "{names:?}");
    for name in names {
        let family = name.strip_suffix("_bucket").unwrap_or(name);
        assert!(
            metrics.contains(&format!("# TYPE {family} ")),
            "the dashboard uses {name}, which /metrics does not serve"
        );
    }
}
