//! PgBouncer's files as they are: a guide-style pgbouncer.ini with md5 and a userlist.txt
//! serves psql and pgbench, settings pgsluice lacks are warned about by name, `convert` gives
//! a TOML file that `check` passes and that runs with the same SHOW CONFIG, and a reload
//! re-reads the userlist.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::{pgbench, primary, wait_for, APP_PASSWORD};

fn pgsluice(args: &[&str], config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pgsluice"))
        .args(args)
        .arg(config)
        .output()
        .unwrap()
}

/// Runs pgsluice on `config`, its log into `log`.
fn run(config: &Path, log: &Path) -> Child {
    let file = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_pgsluice"))
        .args(["run", "--config"])
        .arg(config)
        .stdout(file.try_clone().unwrap())
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap()
}

fn psql(port: u16, user: &str, password: &str, db: &str, sql: &str) -> std::process::Output {
    psql_at("127.0.0.1", port, user, password, db, sql)
}

/// `psql` to `host`, an address or a socket's directory.
fn psql_at(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    db: &str,
    sql: &str,
) -> std::process::Output {
    Command::new(pgsluice::localpg::pg_bindir().join("psql"))
        .args(["-X", "-h", host, "-p", &port.to_string(), "-U", user])
        .args(["-d", db, "-Atc", sql])
        .env("PGPASSWORD", password)
        .output()
        .unwrap()
}

fn answers(port: u16) -> bool {
    wait_for(Duration::from_secs(10), || {
        psql(port, "app", APP_PASSWORD, "app", "SELECT 1")
            .status
            .success()
    })
}

/// A pgbouncer.ini in `dir` with `databases` as its [databases] section and `extra` in its
/// [pgbouncer] one, md5 logins of `app` from a userlist beside it; and its listening port.
fn app_ini(dir: &Path, databases: &str, extra: &str) -> (std::path::PathBuf, u16) {
    let userlist = dir.join("userlist.txt");
    std::fs::write(&userlist, format!("\"app\" \"{APP_PASSWORD}\"\n")).unwrap();
    let (port, http) = (
        pgsluice::localpg::free_port(),
        pgsluice::localpg::free_port(),
    );
    let ini = dir.join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\n{databases}\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
             listen_port = {port}\nauth_type = md5\nauth_file = {userlist}\n\
             http_listen = 127.0.0.1:{http}\n{socket}{extra}\n",
            userlist = userlist.display(),
            // Its own directory for the socket, not PgBouncer's /tmp, unless `extra` says.
            socket = match extra.contains("unix_socket_dir") {
                true => String::new(),
                false => format!("unix_socket_dir = {}\n", dir.display()),
            },
        ),
    )
    .unwrap();
    (ini, port)
}

fn show_config(port: u16) -> String {
    let out = psql(port, "app", APP_PASSWORD, "pgsluice", "SHOW CONFIG");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_pgbouncer_ini_and_userlist_run_as_they_are() {
    let pg = primary();
    let md5_hash = pg
        .psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'md5user'")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let userlist = dir.path().join("userlist.txt");
    std::fs::write(
        &userlist,
        format!(";; written by hand\n\"app\" \"{APP_PASSWORD}\"\n\"md5user\" \"{md5_hash}\"\n"),
    )
    .unwrap();
    let (port, http) = (
        pgsluice::localpg::free_port(),
        pgsluice::localpg::free_port(),
    );
    // As the guides write it, inline comments included (PgBouncer itself refuses those).
    let ini = dir.path().join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "# /etc/pgbouncer/pgbouncer.ini\n[databases]\n\
             app = host=127.0.0.1 port={pg_port} dbname=app\n\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
             auth_type = md5\nauth_file = {userlist}\n\
             logfile = /var/log/pgbouncer/pgbouncer.log\nunix_socket_dir = {socket_dir}\n\n\
             # Pool sizing\npool_mode = transaction\n\
             max_client_conn = 300  # Total from all app instances\n\
             default_pool_size = 25 # Actual DB connections\nreserve_pool_size = 5\n\
             admin_users = app\nhttp_listen = 127.0.0.1:{http}\n",
            pg_port = pg.port,
            userlist = userlist.display(),
            socket_dir = dir.path().display(),
        ),
    )
    .unwrap();

    let check = pgsluice(&["check", "--config"], &ini);
    let warnings = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{warnings}");
    assert!(
        warnings.contains("[pgbouncer] logfile"),
        "no warning names logfile: {warnings}"
    );
    assert!(!warnings.contains("unix_socket_dir"), "{warnings}");

    let log = dir.path().join("ini.log");
    let mut child = run(&ini, &log);
    assert!(answers(port), "{}", std::fs::read_to_string(&log).unwrap());
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("[pgbouncer] logfile"), "{logged}");
    // md5user logs in with the md5 hash from the userlist, to pgsluice and to the server.
    let out = psql(port, "md5user", "md5 pw", "app", "SELECT current_user");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "md5user");
    let out = psql(port, "md5user", "wrong", "app", "SELECT 1");
    assert!(String::from_utf8_lossy(&out.stderr).contains("password authentication failed"));
    // And on the Unix socket in unix_socket_dir, as PgBouncer listens there.
    let dir_name = dir.path().display().to_string();
    let out = psql_at(&dir_name, port, "md5user", "md5 pw", "app", "SELECT 7");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7", "{out:?}");
    pgbench(port, &["-i", "-s", "1", "-q"]);
    let text = pgbench(port, &["-n", "-c", "8", "-j", "2", "-t", "50"]);
    assert!(
        text.contains("number of transactions actually processed: 400/400"),
        "{text}"
    );
    let from_ini = show_config(port);

    // A user added to the userlist can log in after a reload, without a restart.
    pg.psql("CREATE ROLE late LOGIN PASSWORD 'late pw'; GRANT ALL ON DATABASE app TO late")
        .unwrap();
    assert!(!psql(port, "late", "late pw", "app", "SELECT 1")
        .status
        .success());
    let mut list = std::fs::read_to_string(&userlist).unwrap();
    list.push_str("\"late\" \"late pw\"\n");
    std::fs::write(&userlist, list).unwrap();
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(wait_for(Duration::from_secs(10), || {
        psql(port, "late", "late pw", "app", "SELECT 1")
            .status
            .success()
    }));
    std::fs::write(
        &userlist,
        format!("\"app\" \"{APP_PASSWORD}\"\n\"md5user\" \"{md5_hash}\"\n"),
    )
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();

    // convert: a TOML file that check passes, and that runs with the same SHOW CONFIG.
    let converted = pgsluice(&["convert"], &ini);
    assert!(converted.status.success(), "{converted:?}");
    let text = String::from_utf8(converted.stdout).unwrap();
    assert!(
        text.contains("# not carried over:") && text.contains("[pgbouncer] logfile"),
        "{text}"
    );
    let toml = dir.path().join("converted.toml");
    std::fs::write(&toml, &text).unwrap();
    let check = pgsluice(&["check", "--config"], &toml);
    assert!(check.status.success(), "{check:?}\n{text}");
    let mut child = run(&toml, &dir.path().join("toml.log"));
    assert!(answers(port));
    assert_eq!(show_config(port), from_ini);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_bad_value_names_file_section_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("pgbouncer.ini");
    for (text, place) in [
        (
            "[databases]\napp = host=127.0.0.1 port=5432\n[pgbouncer]\ndefault_pool_size = lots\n",
            "[pgbouncer] default_pool_size",
        ),
        (
            "[databases]\napp = host=127.0.0.1 port=none\n[pgbouncer]\n",
            "[databases] app",
        ),
        (
            "[databases]\napp = port=5432\n[pgbouncer]\nauth_type = pam\n",
            "[pgbouncer] auth_type",
        ),
    ] {
        std::fs::write(&ini, text).unwrap();
        let out = pgsluice(&["check", "--config"], &ini);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(
            err.contains("pgbouncer.ini") && err.contains(place),
            "{text}: {err}"
        );
    }
}

/// PgBouncer's fallback database `*`: a client of any database not listed gets a pool for it,
/// with that name on the server, and SHOW DATABASES lists it once used, until it has gone
/// unused for autodb_idle_timeout: then its servers are closed and it is forgotten, until a
/// client asks for it again.
#[test]
fn the_fallback_database_serves_any_name() {
    let pg = primary();
    let dir = tempfile::tempdir().unwrap();
    let (ini, port) = app_ini(
        dir.path(),
        &format!("* = host=127.0.0.1 port={}", pg.port),
        "admin_users = app\nautodb_idle_timeout = 2",
    );
    let mut child = run(&ini, &dir.path().join("ini.log"));
    assert!(answers(port));
    for db in ["app", "postgres"] {
        let out = psql(port, "app", APP_PASSWORD, db, "SELECT current_database()");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), db, "{out:?}");
    }
    let out = psql(port, "app", APP_PASSWORD, "nosuch", "SELECT 1");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{out:?}"
    );
    let listed = psql(port, "app", APP_PASSWORD, "pgsluice", "SHOW DATABASES");
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let names: Vec<&str> = listed.lines().filter_map(|l| l.split('|').next()).collect();
    assert!(
        names.contains(&"app") && names.contains(&"postgres"),
        "{listed}"
    );

    let served = || {
        let listed = psql(port, "app", APP_PASSWORD, "pgsluice", "SHOW DATABASES");
        String::from_utf8_lossy(&listed.stdout)
            .lines()
            .filter_map(|l| l.split('|').next())
            .filter(|n| ["app", "postgres", "nosuch"].contains(n))
            .count()
    };
    assert!(
        wait_for(Duration::from_secs(15), || served() == 0),
        "still listed after autodb_idle_timeout"
    );
    let servers = "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'";
    assert!(
        wait_for(Duration::from_secs(10), || pg.psql(servers).unwrap() == "0"),
        "its servers are closed"
    );
    let out = psql(
        port,
        "app",
        APP_PASSWORD,
        "app",
        "SELECT current_database()",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "app",
        "{out:?}"
    );
    assert_eq!(served(), 1);
    let _ = child.kill();
    let _ = child.wait();
}

/// A `[databases]` entry without `host=` reaches its server's Unix socket in
/// `unix_socket_dir`, as PgBouncer's does: queries, a cancel (sent to the server over its
/// socket), and a server that died while idle is replaced unseen.
#[test]
fn an_entry_without_host_reaches_its_server_through_its_unix_socket() {
    let pg = primary();
    let dir = tempfile::tempdir().unwrap();
    let (ini, port) = app_ini(
        dir.path(),
        &format!("app = port={} dbname=app", pg.port),
        &format!(
            "unix_socket_dir = {}\ndefault_pool_size = 1",
            pg.socket_dir().display()
        ),
    );
    let mut child = run(&ini, &dir.path().join("ini.log"));
    assert!(answers(port));
    // Over TCP, client_addr would be 127.0.0.1; over the socket it is NULL.
    let over = "SELECT coalesce(host(client_addr), 'socket') FROM pg_stat_activity \
                WHERE pid = pg_backend_pid()";
    let out = psql(port, "app", APP_PASSWORD, "app", over);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "socket",
        "{out:?}"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn =
            format!("host=127.0.0.1 port={port} user=app password='{APP_PASSWORD}' dbname=app");
        let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        // An idle server over a socket is pooled like any other: the same one again (the
        // pool has one).
        let pid = || async {
            match &client
                .simple_query("SELECT pg_backend_pid()")
                .await
                .unwrap()[1]
            {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).unwrap().to_owned(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(pid().await, pid().await);
        let token = client.cancel_token();
        let slow = client.simple_query("SELECT pg_sleep(20)");
        let cancel = async {
            assert!(
                tokio::task::spawn_blocking({
                    let port = pg.port;
                    move || {
                        wait_for(Duration::from_secs(10), || {
                            support::running_on(port, "pg_sleep(20)")
                        })
                    }
                })
                .await
                .unwrap(),
                "the query did not start"
            );
            token.cancel_query(tokio_postgres::NoTls).await.unwrap();
        };
        let (slow, ()) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(slow, cancel)
        })
        .await
        .expect("cancelled within 10 s");
        let code = slow.unwrap_err().code().map(|c| c.code().to_owned());
        assert_eq!(code.as_deref(), Some("57014"));

        // The pooled server dies while idle: the next query gets another one.
        pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'")
            .unwrap();
        let servers = "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'";
        assert!(wait_for(Duration::from_secs(5), || pg
            .psql(servers)
            .unwrap()
            == "0"));
        let r = client.simple_query("SELECT 1").await;
        assert!(r.is_ok(), "{r:?}");
    });
    child.kill().unwrap();
    child.wait().unwrap();
}
