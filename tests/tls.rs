//! TLS on both sides, with certificates the test makes with openssl: psql with
//! sslmode=require through pgsluice, plain clients refused under require (not on the Unix
//! socket), pgsluice verifying a TLS server against its CA and showing its own certificate to
//! a server that asks, and clients logged in by their certificates (auth_type = "cert").

mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use support::{primary, stdout, Pooler, APP_PASSWORD};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A key (`key`) and a certificate (`pem`) for `subject`, signed by ca.pem/ca.key in `dir`
/// with the X.509 v3 `extensions` (rustls takes no v1 certificate).
fn signed(dir: &Path, subject: &str, (key, pem): (&str, &str), extensions: &str) {
    let (csr, ext) = (format!("{pem}.csr"), format!("{pem}.cnf"));
    std::fs::write(dir.join(&ext), extensions).unwrap();
    openssl(
        dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", key, "-out", &csr,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            pem,
        ],
    );
}

/// A CA, and a certificate it signed for localhost / 127.0.0.1: ca.pem, cert.pem, key.pem.
fn certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=pgsluice test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    signed(
        dir,
        "/CN=localhost",
        ("key.pem", "cert.pem"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    );
}

fn psql(pooler: &Pooler, sslmode: &str) -> std::process::Output {
    Command::new(pgsluice::localpg::pg_bindir().join("psql"))
        .arg(format!(
            "host=127.0.0.1 port={} user=app dbname=app sslmode={sslmode}",
            pooler.port()
        ))
        .args(["-X", "-A", "-t", "-c", "SHOW ssl"])
        .env("PGPASSWORD", APP_PASSWORD)
        .output()
        .unwrap()
}

#[test]
fn psql_with_sslmode_require_and_plain_clients_refused() {
    let pg = primary();
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let d = dir.path().display();
    let pooler = Pooler::start(
        &pg,
        &format!(
            "client_tls_sslmode = \"require\"\nclient_tls_cert_file = \"{d}/cert.pem\"\n\
             client_tls_key_file = \"{d}/key.pem\"\nunix_socket_dir = \"{d}\""
        ),
    );
    let out = psql(&pooler, "require");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The server behind has no TLS: the query ran there, over plain text from pgsluice.
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "off");
    let out = psql(&pooler, "disable");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SSL required"), "{err}");
    // On this host's Unix socket, as in PostgreSQL: TLS is not offered, nor required.
    let socket = dir.path().join(format!(".s.PGSQL.{}", pooler.port()));
    let mut raw = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    raw.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .unwrap();
    let mut answer = [0u8; 1];
    raw.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"N");
    let out = Command::new(pgsluice::localpg::pg_bindir().join("psql"))
        .arg(format!(
            "host={d} port={} user=app dbname=app",
            pooler.port()
        ))
        .args(["-X", "-A", "-t", "-c", "SELECT 1"])
        .env("PGPASSWORD", APP_PASSWORD)
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "1");
    // verify-full against our CA: the certificate names 127.0.0.1.
    let out = Command::new(pgsluice::localpg::pg_bindir().join("psql"))
        .arg(format!(
            "host=127.0.0.1 port={} user=app dbname=app sslmode=verify-full sslrootcert={d}/ca.pem",
            pooler.port()
        ))
        .args(["-X", "-A", "-t", "-c", "SELECT 1"])
        .env("PGPASSWORD", APP_PASSWORD)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn tls_off_answers_n_to_sslrequest() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "");
    let out = psql(&pooler, "prefer");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = psql(&pooler, "require");
    assert!(!out.status.success(), "no TLS offered, so require fails");
}

/// Has `pg` serve TLS with the certificate of `certificates(dir)`, and check client
/// certificates against its CA.
fn serve_tls(pg: &pgsluice::localpg::LocalPostgres, dir: &Path) {
    let d = dir.display().to_string();
    // PostgreSQL reads its key only when owned by its own user with no group access.
    for f in ["cert.pem", "key.pem"] {
        let path = dir.join(f);
        let _ = Command::new("chown").arg("postgres").arg(&path).status();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    }
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for (key, file) in [
        ("ssl_cert_file", "cert.pem"),
        ("ssl_key_file", "key.pem"),
        ("ssl_ca_file", "ca.pem"),
    ] {
        pg.psql(&format!("ALTER SYSTEM SET {key} = '{d}/{file}'"))
            .unwrap();
    }
    pg.psql("ALTER SYSTEM SET ssl = on").unwrap();
    pg.psql("SELECT pg_reload_conf()").unwrap();
    assert!(support::wait_for(std::time::Duration::from_secs(5), || {
        pg.psql("SHOW ssl").unwrap() == "on"
    }));
}

#[test]
fn pgsluice_verifies_a_tls_server() {
    let pg = primary();
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let d = dir.path().display().to_string();
    serve_tls(&pg, dir.path());
    for mode in ["require", "verify-ca", "verify-full"] {
        let pooler = Pooler::start(
            &pg,
            &format!("server_tls_sslmode = \"{mode}\"\nserver_tls_ca_file = \"{d}/ca.pem\""),
        );
        let out = pooler.psql("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()");
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t", "{mode}");
    }
    // A CA that did not sign the server's certificate: no connection.
    let other = tempfile::tempdir().unwrap();
    certificates(other.path());
    let pooler = Pooler::start(
        &pg,
        &format!(
            "server_tls_sslmode = \"verify-ca\"\nserver_tls_ca_file = \"{}/ca.pem\"",
            other.path().display()
        ),
    );
    let out = pooler.psql("SELECT 1");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TLS"), "{err}");
}

/// A server that logs `app` in by its certificate (`cert` in pg_hba.conf): refused without
/// server_tls_cert_file, in with it, the certificate's name the one the server saw.
#[test]
fn pgsluice_shows_its_certificate_to_a_server_that_asks() {
    let pg = primary();
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let d = dir.path().display().to_string();
    client_certificate(dir.path(), "app");
    serve_tls(&pg, dir.path());
    let hba_file = pg.psql("SHOW hba_file").unwrap();
    let hba = std::fs::read_to_string(&hba_file).unwrap();
    std::fs::write(
        &hba_file,
        format!("hostssl app app 127.0.0.1/32 cert\n{hba}"),
    )
    .unwrap();
    pg.psql("SELECT pg_reload_conf()").unwrap();

    let without = Pooler::start(&pg, "server_tls_sslmode = \"require\"");
    let out = without.psql("SELECT 1");
    assert!(!out.status.success(), "in without a certificate");
    let with = Pooler::start(
        &pg,
        &format!(
            "server_tls_sslmode = \"verify-full\"\nserver_tls_ca_file = \"{d}/ca.pem\"\n\
             server_tls_cert_file = \"{d}/app.pem\"\nserver_tls_key_file = \"{d}/app.key\""
        ),
    );
    let out = with.psql("SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()");
    assert_eq!(stdout(&out), "t|/CN=app");
}

/// A client certificate for role `name`, signed by the CA of `certificates(dir)`: NAME.pem
/// and NAME.key (an X.509 v3 certificate, as rustls requires; the key readable by its owner
/// only, as libpq requires).
fn client_certificate(dir: &Path, name: &str) {
    let key = format!("{name}.key");
    signed(
        dir,
        &format!("/CN={name}"),
        (&key, &format!("{name}.pem")),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
    std::fs::set_permissions(
        dir.join(&key),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
}

/// auth_type = "cert", as PgBouncer has it: a TLS client whose certificate (signed by
/// client_tls_ca_file's CA) names the user it asks for logs in without a password; no
/// certificate, or one naming another user, is refused with PostgreSQL's words.
#[test]
fn a_client_certificate_that_names_the_user_logs_it_in() {
    let pg = primary();
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    client_certificate(dir.path(), "app");
    let d = dir.path().display().to_string();
    let pooler = Pooler::start(
        &pg,
        &format!(
            "auth_type = \"cert\"\nclient_tls_sslmode = \"require\"\n\
             client_tls_cert_file = \"{d}/cert.pem\"\nclient_tls_key_file = \"{d}/key.pem\"\n\
             client_tls_ca_file = \"{d}/ca.pem\""
        ),
    );
    let psql = |user: &str, certificate: &str| {
        Command::new(pgsluice::localpg::pg_bindir().join("psql"))
            .arg(format!(
                "host=127.0.0.1 port={} user={user} dbname=app sslmode=require {certificate}",
                pooler.port()
            ))
            .args(["-X", "-A", "-t", "-w", "-c", "SELECT current_user"])
            .env_remove("PGPASSWORD")
            .output()
            .unwrap()
    };
    let app = format!("sslcert={d}/app.pem sslkey={d}/app.key");
    assert_eq!(stdout(&psql("app", &app)), "app");
    let out = psql("md5user", &app);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("certificate authentication failed for user \"md5user\""),
        "{err}"
    );
    let out = psql("app", "sslcert=/nonexistent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("connection requires a valid client certificate"),
        "{err}"
    );
}
