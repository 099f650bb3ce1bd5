//! Stored secrets: clients authenticated against a SCRAM verifier or md5 hash copied from
//! pg_authid, the server login made with the hash or a database-level login; protocol
//! version negotiation; bogus cancel keys; auth_type = "hba".

mod support;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use std::io::{Read, Write};
use std::time::Duration;
use support::{connect, primary, stdout, Pooler, APP_PASSWORD};

#[test]
fn stored_scram_verifier_and_md5_hash_authenticate_clients() {
    let pg = primary();
    pg.psql("CREATE ROLE alice LOGIN PASSWORD 'alice pw'")
        .unwrap();
    let verifier = pg
        .psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'alice'")
        .unwrap();
    let md5_hash = pg
        .psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'md5user'")
        .unwrap();
    assert!(verifier.starts_with("SCRAM-SHA-256$") && md5_hash.starts_with("md5"));
    // alice's clients log in against her verifier; the database logs in to the server as app.
    // md5user's clients are checked against the md5 hash, which also logs in to the server.
    let text = format!(
        "listen_port = 0\nauth_type = \"md5\"\n\
         [databases.app]\nport = {p}\n\
         [databases.as_app]\nport = {p}\ndbname = \"app\"\nuser = \"app\"\npassword = \"{APP_PASSWORD}\"\n\
         [users.alice]\npassword = \"{verifier}\"\n\
         [users.md5user]\npassword = \"{md5_hash}\"\n",
        p = pg.port
    );
    let pooler = Pooler::with_config(pgsluice::config::Config::parse(&text, "t").unwrap());
    let out = pooler.psql_as(
        "alice",
        "alice pw",
        "as_app",
        &["-c", "SELECT current_user"],
    );
    assert_eq!(stdout(&out), "app");
    let out = pooler.psql_as("alice", "wrong", "as_app", &["-c", "SELECT 1"]);
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("password authentication failed for user \"alice\""));
    let out = pooler.psql_as("md5user", "md5 pw", "app", &["-c", "SELECT current_user"]);
    assert_eq!(stdout(&out), "md5user");
    let out = pooler.psql_as("md5user", "nope", "app", &["-c", "SELECT 1"]);
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("password authentication failed for user \"md5user\""));
}

/// A client asking for protocol 3.2 and an unknown `_pq_` option gets
/// NegotiateProtocolVersion (3.0, the option named) and carries on.
#[test]
fn newer_minor_version_is_negotiated_down() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "auth_type = \"trust\"");
    let mut body = Vec::new();
    body.extend_from_slice(&(3i32 << 16 | 2).to_be_bytes());
    for s in ["user", "app", "database", "app", "_pq_.frobnicate", "on"] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    let mut s = support::raw_connect(&pooler);
    s.write_all(&packet).unwrap();
    let got = support::read_until_ready(&mut s);
    let mut chunk = [0u8; 4096];
    assert_eq!(got[0], b'v', "NegotiateProtocolVersion first: {got:?}");
    assert_eq!(&got[5..9], &(3i32 << 16).to_be_bytes());
    assert_eq!(&got[9..13], &1i32.to_be_bytes());
    assert_eq!(&got[13..29], b"_pq_.frobnicate\0");
    let mut q = BytesMut::new();
    frontend::query("SELECT 1", &mut q).unwrap();
    s.write_all(&q).unwrap();
    let n = s.read(&mut chunk).unwrap();
    assert!(chunk[..n].contains(&b'D'), "a row comes back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bogus_cancel_keys_are_ignored() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "default_pool_size = 2");
    let c = connect(&pooler, "app", APP_PASSWORD).await;
    let query =
        tokio::spawn(async move { c.simple_query("SELECT pg_sleep(1.5)").await.map(|_| ()) });
    assert!(support::wait_for(Duration::from_secs(10), || {
        support::running(&pg, "pg_sleep")
    }));
    // Every process id this instance could have given, with a wrong secret.
    for pid in 1..5 {
        let mut buf = BytesMut::new();
        frontend::cancel_request(pid, 12345, &mut buf);
        let mut s = tokio::net::TcpStream::connect(pooler.addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut s, &buf)
            .await
            .unwrap();
        let mut sink = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut sink).await;
    }
    query.await.unwrap().expect("the query was not cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_pool_opens_after_reserve_pool_timeout() {
    let pg = primary();
    let pooler = Pooler::start(
        &pg,
        "default_pool_size = 1\nreserve_pool_size = 1\nreserve_pool_timeout = 0.3",
    );
    let a = connect(&pooler, "app", APP_PASSWORD).await;
    let b = connect(&pooler, "app", APP_PASSWORD).await;
    let both = tokio::spawn(async move {
        let (ra, rb) = tokio::join!(
            a.simple_query("SELECT pg_sleep(4)"),
            b.simple_query("SELECT pg_sleep(4)")
        );
        ra.unwrap();
        rb.unwrap();
    });
    // Without the reserve the second sleep would start only when the first ends.
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(4)' AND state = 'active'";
    let concurrent = tokio::task::spawn_blocking(move || {
        let seen = support::wait_for(Duration::from_secs(3), || {
            pg.psql(sql).map(|n| n == "2").unwrap_or(false)
        });
        (seen, pg)
    })
    .await
    .unwrap();
    assert!(concurrent.0, "the reserve connection was never opened");
    both.await.unwrap();
}

/// psql as `user` (password `password`, "" for none) to `db` at `host` (an address or the
/// socket's directory) on `port`, never asking for a password: (stdout, stderr, success).
fn psql_at(host: &str, port: u16, user: &str, password: &str, db: &str) -> (String, String, bool) {
    let out = std::process::Command::new(pgsluice::localpg::pg_bindir().join("psql"))
        .arg(format!("host={host} port={port} user={user} dbname={db}"))
        .args(["-X", "-A", "-t", "-w", "-c", "SELECT current_user"])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

/// auth_type = "hba": auth_hba_file's first matching line decides, by connection type,
/// database, user and address, with PostgreSQL's errors for a line that rejects and for no
/// line; `peer` on the Unix socket lets in the system user the client runs as, under its
/// own name only; a reload reads the file again.
#[test]
fn auth_hba_file_decides_line_by_line() {
    let pg = primary();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    // SAFETY: getuid cannot fail.
    let me = pgsluice::auth::peer::system_user_name(unsafe { libc::getuid() }).unwrap();
    let hba = dir.path().join("hba.conf");
    let lines = format!(
        "# TYPE DATABASE USER ADDRESS METHOD\n\
         local  pgsluice  all      reject\n\
         local  all       {me}     peer\n\
         local  all       app      peer\n\
         host   all       md5user  127.0.0.1/32  reject\n\
         host   app,pgsluice  app  127.0.0.1/32  scram-sha-256\n"
    );
    std::fs::write(&hba, &lines).unwrap();
    let port = pgsluice::localpg::free_port();
    let text = format!(
        "listen_port = {port}\nhttp_listen = \"\"\nunix_socket_dir = \"{d}\"\n\
         auth_type = \"hba\"\nauth_hba_file = \"{d}/hba.conf\"\nadmin_users = [\"app\"]\n\
         [databases.app]\nport = {}\nuser = \"postgres\"\n\
         [users.app]\npassword = \"{APP_PASSWORD}\"\n[users.md5user]\npassword = \"md5 pw\"\n\
         [users.cleartext_user]\npassword = \"clear pw\"\n[users.\"{me}\"]\n",
        pg.port
    );
    let path = dir.path().join("pgsluice.toml");
    std::fs::write(&path, text).unwrap();
    // Killed when dropped, also when the test fails.
    let pooler = support::Process {
        child: support::Process::spawn(
            std::process::Command::new(env!("CARGO_BIN_EXE_pgsluice")),
            &path,
        ),
        port,
        http: 0,
    };
    let tcp = "127.0.0.1";
    assert!(support::wait_for(Duration::from_secs(10), || {
        psql_at(tcp, port, "app", APP_PASSWORD, "app").2
    }));

    let (who, err, ok) = psql_at(&d, port, &me, "", "app");
    assert!(ok && who == "postgres", "{err}");
    let (_, err, ok) = psql_at(&d, port, "app", APP_PASSWORD, "app");
    assert!(
        !ok && err.contains("Peer authentication failed for user \"app\""),
        "{err}"
    );
    let (_, err, ok) = psql_at(&d, port, "app", APP_PASSWORD, "pgsluice");
    let rejects = "pg_hba.conf rejects connection for host \"[local]\", user \"app\", \
                   database \"pgsluice\", no encryption";
    assert!(!ok && err.contains(rejects), "{err}");
    let (_, err, ok) = psql_at(tcp, port, "app", APP_PASSWORD, "app");
    assert!(ok, "{err}");
    let (_, err, ok) = psql_at(tcp, port, "app", "wrong", "app");
    assert!(
        !ok && err.contains("password authentication failed"),
        "{err}"
    );
    let (_, err, ok) = psql_at(tcp, port, "md5user", "md5 pw", "app");
    let rejects = "pg_hba.conf rejects connection for host \"127.0.0.1\", user \"md5user\", \
                   database \"app\", no encryption";
    assert!(!ok && err.contains(rejects), "{err}");
    let (_, err, ok) = psql_at(tcp, port, "cleartext_user", "clear pw", "app");
    let no_entry = "no pg_hba.conf entry for host \"127.0.0.1\", user \"cleartext_user\", \
                    database \"app\", no encryption";
    assert!(!ok && err.contains(no_entry), "{err}");

    // A line for md5user first, and a reload (SIGHUP): the file is read again.
    std::fs::write(&hba, format!("host all md5user 127.0.0.1/32 md5\n{lines}")).unwrap();
    pooler.signal("HUP");
    assert!(support::wait_for(Duration::from_secs(10), || {
        psql_at(tcp, port, "md5user", "md5 pw", "app").2
    }));
    let (who, err, ok) = psql_at(tcp, port, "md5user", "md5 pw", "app");
    assert!(ok && who == "postgres", "{err}");
}
