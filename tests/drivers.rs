//! Real drivers through pgsluice in transaction mode, with two replicas and many more clients
//! than server connections: the programs under `tests/drivers/`, each with asserted results
//! over a bounded workload and the session-state scenarios (SET, advisory locks, LISTEN). The
//! drivers are installed here on first use (a venv under `target/` from PyPI); a driver that
//! cannot be installed fails its test.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use support::{Pooler, Replicated};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// One install at a time, for the tests of this file that run side by side.
static INSTALL: Mutex<()> = Mutex::new(());

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The venv with the Python drivers of tests/drivers/python/requirements.txt, made or
/// brought up to date when the requirements changed.
fn python() -> PathBuf {
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let venv = Path::new(ROOT).join("target/drivers/venv");
    let requirements = Path::new(ROOT).join("tests/drivers/python/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).expect("requirements.txt");
    let stamp = venv.join("installed.txt");
    let bin = venv.join("bin/python");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) || !bin.exists() {
        run(
            Command::new("python3")
                .args(["-m", "venv", "--clear"])
                .arg(&venv),
            "python3 -m venv",
        );
        run(
            Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "--disable-pip-version-check", "-r"])
                .arg(&requirements),
            "pip install of the Python drivers",
        );
        std::fs::write(&stamp, wanted).unwrap();
    }
    bin
}

/// node-postgres from tests/drivers/node's lockfile (`npm ci`), in target/; the directory
/// to give as NODE_PATH.
fn node_modules() -> PathBuf {
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let source = Path::new(ROOT).join("tests/drivers/node");
    let dir = Path::new(ROOT).join("target/drivers/node");
    let lock = std::fs::read_to_string(source.join("package-lock.json")).expect("lockfile");
    let stamp = dir.join("installed.json");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(lock.as_str()) {
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["package.json", "package-lock.json"] {
            std::fs::copy(source.join(f), dir.join(f)).unwrap();
        }
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir),
            "npm ci of node-postgres",
        );
        std::fs::write(&stamp, lock).unwrap();
    }
    dir.join("node_modules")
}

/// PgJDBC from Debian's libpostgresql-jdbc-java (installed if missing), and
/// tests/drivers/jdbc/Check.java compiled against it into target/: the class path.
fn jdbc() -> String {
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let jar = Path::new("/usr/share/java/postgresql.jar");
    if !jar.exists() {
        run(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "libpostgresql-jdbc-java"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
            "apt-get install libpostgresql-jdbc-java",
        );
    }
    let classes = Path::new(ROOT).join("target/drivers/jdbc");
    std::fs::create_dir_all(&classes).unwrap();
    run(
        Command::new("javac")
            .arg("-cp")
            .arg(jar)
            .arg("-d")
            .arg(&classes)
            .arg(Path::new(ROOT).join("tests/drivers/jdbc/Check.java")),
        "javac Check.java",
    );
    format!("{}:{}", classes.display(), jar.display())
}

/// A primary with two replicas, tables for each driver, and pgsluice in front of them with
/// a pool of 4 servers per node.
fn cluster() -> (Replicated, Pooler) {
    let cluster = Replicated::start();
    cluster
        .primary
        .psql_in(
            "app",
            "CREATE TABLE drv_psycopg (id int PRIMARY KEY, v text); \
             CREATE TABLE drv_asyncpg (id int PRIMARY KEY, v text); \
             CREATE TABLE drv_node (id int PRIMARY KEY, v text); \
             CREATE TABLE drv_jdbc (id int PRIMARY KEY, v text); \
             ALTER TABLE drv_psycopg OWNER TO app; ALTER TABLE drv_asyncpg OWNER TO app; \
             ALTER TABLE drv_node OWNER TO app; ALTER TABLE drv_jdbc OWNER TO app",
        )
        .unwrap();
    let pooler = cluster.pooler(
        "default_pool_size = 4\nmax_client_conn = 300\nread_your_writes = \"pool\"",
        "",
    );
    (cluster, pooler)
}

fn url(pooler: &Pooler) -> String {
    let password = support::APP_PASSWORD.replace(' ', "%20");
    format!(
        "postgresql://app:{password}@127.0.0.1:{}/app",
        pooler.port()
    )
}

/// Runs a driver program to its end (at most 3 minutes) and checks it said "ok".
fn check(mut cmd: Command, name: &str) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(180);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "{name} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn psycopg3() {
    let python = python();
    let (_cluster, pooler) = cluster();
    let mut cmd = Command::new(python);
    cmd.arg(Path::new(ROOT).join("tests/drivers/python/psycopg_check.py"))
        .arg(url(&pooler));
    check(cmd, "psycopg");
}

#[test]
fn asyncpg() {
    let python = python();
    let (_cluster, pooler) = cluster();
    let mut cmd = Command::new(python);
    cmd.arg(Path::new(ROOT).join("tests/drivers/python/asyncpg_check.py"))
        .arg(url(&pooler));
    check(cmd, "asyncpg");
}

#[test]
fn node_postgres() {
    let modules = node_modules();
    let (_cluster, pooler) = cluster();
    let mut cmd = Command::new("node");
    cmd.arg(Path::new(ROOT).join("tests/drivers/node/check.js"))
        .arg(url(&pooler))
        .env("NODE_PATH", modules);
    check(cmd, "node-postgres");
}

#[test]
fn pgjdbc() {
    let classpath = jdbc();
    let (_cluster, pooler) = cluster();
    let mut cmd = Command::new("java");
    cmd.args(["-cp", &classpath, "Check"])
        .arg(format!("jdbc:postgresql://127.0.0.1:{}/app", pooler.port()))
        .args(["app", support::APP_PASSWORD]);
    check(cmd, "PgJDBC");
}

/// sqlx (its own pool, and the statement cache each of its connections keeps), in process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_with_its_statement_cache() {
    use sqlx::{Connection, Row};
    let (_cluster, pooler) = cluster();
    let url = url(&pooler);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .connect(&url)
        .await
        .expect("sqlx pool");
    let mut tasks = Vec::new();
    for i in 0..16i32 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            for r in 0..25i32 {
                let key = i * 1000 + r;
                // Persistent (cached, server-side) statements: sqlx's default.
                let n: i32 = sqlx::query_scalar("SELECT $1::int + 1")
                    .bind(key)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                assert_eq!(n, key + 1);
                let mut tx = pool.begin().await.unwrap();
                sqlx::query("INSERT INTO drv_jdbc (id, v) VALUES ($1, $2)")
                    .bind(500_000 + key)
                    .bind(format!("sqlx {key}"))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                let v: String = sqlx::query_scalar("SELECT v FROM drv_jdbc WHERE id = $1")
                    .bind(500_000 + key)
                    .fetch_one(&mut *tx)
                    .await
                    .unwrap();
                assert_eq!(v, format!("sqlx {key}"));
                tx.commit().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.expect("sqlx client");
    }
    pool.close().await;

    // Session state on one connection, seen by no other.
    let mut a = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut b = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("SET search_path TO tenant_sqlx, public")
        .execute(&mut a)
        .await
        .unwrap();
    for _ in 0..10 {
        let own: String = sqlx::query("SHOW search_path")
            .fetch_one(&mut a)
            .await
            .unwrap()
            .get(0);
        assert_eq!(own, "tenant_sqlx, public");
        let other: String = sqlx::query("SHOW search_path")
            .fetch_one(&mut b)
            .await
            .unwrap()
            .get(0);
        assert_eq!(other, "\"$user\", public");
    }
    sqlx::query("SELECT pg_advisory_lock(4646)")
        .execute(&mut a)
        .await
        .unwrap();
    for n in 0..5i32 {
        let mut tx = a.begin().await.unwrap();
        sqlx::query("SELECT $1::int")
            .bind(n)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(4646)")
        .fetch_one(&mut b)
        .await
        .unwrap();
    assert!(!held, "the lock moved to another server");
    let unlocked: bool = sqlx::query_scalar("SELECT pg_advisory_unlock(4646)")
        .fetch_one(&mut a)
        .await
        .unwrap();
    assert!(unlocked);
    let mut listener = sqlx::postgres::PgListener::connect(&url).await.unwrap();
    listener.listen("drv_sqlx").await.unwrap();
    sqlx::query("NOTIFY drv_sqlx, 'hello'")
        .execute(&mut b)
        .await
        .unwrap();
    let note = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("notification within 5 s")
        .unwrap();
    assert_eq!(note.payload(), "hello");
}
