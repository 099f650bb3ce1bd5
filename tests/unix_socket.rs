//! Clients on the Unix socket in unix_socket_dir: psql, pgbench and tokio-postgres reach
//! pgsluice there as they reach PostgreSQL; SHOW CLIENTS says `unix`; the file has its mode,
//! replaces one left by a process that is gone, is refused while another process serves it
//! (taken over under so_reuseport) and is removed at the end; idle clients on it park and
//! come back; application_name_add_host names a socket client as PgBouncer does.

mod support;

use pgsluice::config::Config;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use support::{primary, stdout, wait_for, Pooler, Process, APP_PASSWORD};

fn socket(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!(".s.PGSQL.{port}"))
}

/// psql as app over the socket in `dir`, into `db`.
fn psql(dir: &Path, port: u16, db: &str, sql: &str) -> Output {
    Command::new(pgsluice::localpg::pg_bindir().join("psql"))
        .arg(format!(
            "host={} port={port} user=app dbname={db}",
            dir.display()
        ))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", APP_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap()
}

/// A pooler on `port` (0: any) with its socket in `dir`, app's password required.
fn config(pg_port: u16, port: u16, dir: &Path, general: &str) -> Config {
    let text = format!(
        "listen_port = {port}\nunix_socket_dir = \"{}\"\nadmin_users = [\"app\"]\n{general}\n\
         [databases.app]\nport = {pg_port}\n[users.app]\npassword = \"{APP_PASSWORD}\"\n",
        dir.display()
    );
    Config::parse(&text, "test.toml").unwrap()
}

#[test]
fn psql_and_pgbench_reach_pgsluice_over_its_unix_socket() {
    let pg = primary();
    let dir = tempfile::tempdir().unwrap();
    let pooler = Pooler::with_config(config(
        pg.port,
        0,
        dir.path(),
        "unix_socket_mode = \"0700\"",
    ));
    let port = pooler.port();
    let path = socket(dir.path(), port);
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);

    assert_eq!(stdout(&psql(dir.path(), port, "app", "SELECT 1")), "1");
    let pgbench = |args: &[&str]| {
        let out = Command::new(pgsluice::localpg::pg_bindir().join("pgbench"))
            .arg("-h")
            .arg(dir.path())
            .args(["-p", &port.to_string(), "-U", "app"])
            .args(args)
            .arg("app")
            .env("PGPASSWORD", APP_PASSWORD)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    pgbench(&["-i", "-s", "1", "-q"]);
    let text = pgbench(&["-n", "-c", "4", "-j", "2", "-t", "50"]);
    assert!(
        text.contains("number of transactions actually processed: 200/200"),
        "{text}"
    );
    // The console over the socket: its own row says where it came from, as PgBouncer's does.
    let clients = stdout(&psql(dir.path(), port, "pgsluice", "SHOW CLIENTS"));
    let mine = format!("|unix|{port}|unix|{port}|");
    assert!(clients.contains(&mine), "{clients}");

    drop(pooler);
    assert!(!path.exists(), "the socket file is removed at the end");
}

#[test]
fn a_stale_socket_file_is_replaced_and_a_live_one_refused() {
    let pg = primary();
    let dir = tempfile::tempdir().unwrap();
    let port = pgsluice::localpg::free_port();
    // A socket file whose process is gone: its listener closed, the file left behind.
    drop(std::os::unix::net::UnixListener::bind(socket(dir.path(), port)).unwrap());
    let pooler = Pooler::with_config(config(pg.port, port, dir.path(), ""));
    assert_eq!(stdout(&psql(dir.path(), port, "app", "SELECT 1")), "1");

    // Another process on the same port number of another address, in the same directory.
    let second = config(pg.port, port, dir.path(), "listen_addr = \"127.0.0.2\"");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = match rt.block_on(pgsluice::service::Service::bind(second)) {
        Ok(_) => panic!("a second process took a live socket"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("unix_socket_dir") && err.contains("in use by another process"),
        "{err}"
    );
    assert_eq!(stdout(&psql(dir.path(), port, "app", "SELECT 2")), "2");
    drop(pooler);
}

/// Under so_reuseport a new process takes the socket over; the old one, draining, leaves
/// the new one's file in place when it exits.
#[test]
fn a_new_process_takes_over_the_socket() {
    let pg = primary();
    let dir = tempfile::tempdir().unwrap();
    let free = pgsluice::localpg::free_port;
    let port = free();
    let general = format!(
        "so_reuseport = true\nunix_socket_dir = \"{}\"",
        dir.path().display()
    );
    let mut old = Process::start_on(pg.port, dir.path(), "old", &general, (port, free()));
    assert_eq!(stdout(&psql(dir.path(), port, "app", "SELECT 1")), "1");
    let _new = Process::start_on(pg.port, dir.path(), "new", &general, (port, free()));
    old.signal("TERM");
    let status = old
        .exit(Duration::from_secs(30))
        .expect("the old one exits");
    assert!(status.success());
    assert!(socket(dir.path(), port).exists());
    assert_eq!(stdout(&psql(dir.path(), port, "app", "SELECT 3")), "3");
}

/// More clients than the 64 up to which nothing is parked, all on the socket: they park,
/// and each comes back with its setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_on_the_socket_park_and_come_back() {
    const MANY: usize = 80;
    let pg = primary();
    let dir = tempfile::tempdir().unwrap();
    let pooler = Pooler::with_config(config(pg.port, 0, dir.path(), ""));
    let dsn = format!(
        "host={} port={} user=app password='{APP_PASSWORD}' dbname=app",
        dir.path().display(),
        pooler.port()
    );
    let mut clients = Vec::new();
    for i in 0..MANY {
        let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(&format!("SET application_name = 'sock{i}'"))
            .await
            .unwrap();
        clients.push(client);
    }
    let parked = || pooler.ctx.metrics.parked.get();
    assert!(
        wait_for(Duration::from_secs(10), || parked() >= MANY as i64),
        "parked: {}",
        parked()
    );
    for (i, client) in clients.iter().enumerate() {
        let row = client
            .query_one("SELECT current_setting('application_name')", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), format!("sock{i}"));
    }
}

/// psql on the console as `user` with no password (`-w`: never asked), at `host`; run as
/// the OS user `os_user` if given.
fn console_without_password(host: &str, port: u16, user: &str, os_user: Option<&str>) -> Output {
    let psql = pgsluice::localpg::pg_bindir().join("psql");
    let mut command = match os_user {
        Some(os_user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", os_user, "--"]).arg(psql);
            c
        }
        None => Command::new(psql),
    };
    command
        .arg(format!(
            "host={host} port={port} user={user} dbname=pgsluice"
        ))
        .args(["-X", "-A", "-t", "-w", "-c", "SHOW DATABASES"])
        .env_remove("PGPASSWORD")
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap()
}

/// As PgBouncer lets its own user in: a process of the user pgsluice runs as reaches the
/// console on the socket as `pgsluice` (or `pgbouncer`) without a password; over TCP, or
/// from another user, that name is asked for one like any other.
#[test]
fn pgsluices_own_user_reaches_the_console_on_the_socket() {
    let pg = primary();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let pooler = Pooler::with_config(config(pg.port, 0, dir.path(), ""));
    let (host, port) = (dir.path().display().to_string(), pooler.port());
    for user in ["pgsluice", "pgbouncer"] {
        let out = console_without_password(&host, port, user, None);
        assert!(stdout(&out).starts_with("app|127.0.0.1|"), "{out:?}");
    }
    let out = console_without_password("127.0.0.1", port, "pgsluice", None);
    assert!(!out.status.success(), "{out:?}");
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } == 0 {
        let out = console_without_password(&host, port, "pgsluice", Some("postgres"));
        assert!(!out.status.success(), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("password"), "{err}");
    }
}

/// application_name_add_host: the client's address after its application_name, as PgBouncer
/// writes it, over TCP and on the socket; its server has it too.
#[test]
fn application_name_add_host_says_where_a_client_is() {
    let pg = primary();
    let dir = tempfile::tempdir().unwrap();
    let pooler = Pooler::with_config(config(
        pg.port,
        0,
        dir.path(),
        "application_name_add_host = true",
    ));
    let port = pooler.port();
    let over_tcp = stdout(&pooler.psql("SHOW application_name"));
    let client_port = over_tcp
        .strip_prefix("psql - 127.0.0.1:")
        .unwrap_or_default();
    assert!(client_port.parse::<u16>().is_ok(), "{over_tcp}");
    let server_side = "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()";
    let seen = stdout(&pooler.psql(server_side));
    assert!(seen.starts_with("psql - 127.0.0.1:"), "{seen}");
    let on_socket = stdout(&psql(dir.path(), port, "app", "SHOW application_name"));
    let pid = on_socket
        .strip_prefix("psql - unix(")
        .and_then(|rest| rest.split('@').next())
        .unwrap_or_default();
    assert!(pid.parse::<u32>().is_ok_and(|p| p > 0), "{on_socket}");
    assert!(on_socket.ends_with(&format!("):{port}")), "{on_socket}");
}
