//! The configuration's schema, defaults and validation, against small files.

use super::*;

const MINIMAL: &str = "[databases.app]\nport = 5433\n";

#[test]
fn minimal_file_takes_defaults() {
    let c = Config::parse(MINIMAL, "t.toml").unwrap();
    assert_eq!(c.general, General::default());
    assert_eq!(c.databases["app"].host, "127.0.0.1");
}

fn key_of(text: &str) -> String {
    match Config::parse(text, "t.toml") {
        Err(ConfigError::Key { key, file, .. }) => {
            assert_eq!(file, "t.toml");
            key
        }
        other => panic!("expected a key error, got {other:?}"),
    }
}

#[test]
fn errors_name_the_key() {
    assert_eq!(
        key_of(&format!("listen_prot = 1\n{MINIMAL}")),
        "listen_prot"
    );
    assert_eq!(
        key_of(&format!("listen_port = \"x\"\n{MINIMAL}")),
        "listen_port"
    );
    assert_eq!(
        key_of(&format!("query_wait_timeout = \"5 weeks\"\n{MINIMAL}")),
        "query_wait_timeout"
    );
    assert_eq!(
        key_of(&format!("listen_addr = \"localhost:1\"\n{MINIMAL}")),
        "listen_addr"
    );
    assert_eq!(
        key_of(&format!("pool_mode = \"statement\"\n{MINIMAL}")),
        "pool_mode"
    );
    assert_eq!(key_of("[databases.app]\nport = -1\n"), "databases.app.port");
    assert_eq!(
        key_of("[databases.app]\nhots = \"x\"\n"),
        "databases.app.hots"
    );
    assert_eq!(
        key_of(&format!(
            "{MINIMAL}[users.bob]\npassword = \"SCRAM-SHA-256$x\"\n"
        )),
        "users.bob.password"
    );
    assert_eq!(key_of(""), "databases");
}

#[test]
fn syntax_errors_name_the_file() {
    let e = Config::parse("listen_port = ", "t.toml").unwrap_err();
    assert!(e.to_string().starts_with("t.toml: "), "{e}");
}

#[test]
fn pool_settings_prefer_database_then_user() {
    let text = "default_pool_size = 7\n[databases.a]\npool_size = 3\n[databases.b]\n\
                [users.u]\npool_size = 5\npool_mode = \"session\"\n";
    let c = Config::parse(text, "t").unwrap();
    assert_eq!(c.pool_settings("a", "u").unwrap().pool_size, 3);
    assert_eq!(c.pool_settings("b", "u").unwrap().pool_size, 5);
    assert_eq!(c.pool_settings("b", "x").unwrap().pool_size, 7);
    assert_eq!(
        c.pool_settings("b", "u").unwrap().pool_mode,
        PoolMode::Session
    );
    assert!(c.pool_settings("zz", "u").is_none());
}

#[test]
fn replicas_in_both_forms() {
    let text = "[databases.app]\nport = 5433\nload_balance = \"least_outstanding\"\n\
                replicas = [\"10.0.0.2:5434\", { host = \"::1\", port = 5435, weight = 3 }, \"[::1]:5436\"]\n";
    let c = Config::parse(text, "t").unwrap();
    let db = &c.databases["app"];
    assert_eq!(db.load_balance, LoadBalance::LeastOutstanding);
    assert_eq!(db.read_from_primary, ReadFromPrimary::Fallback);
    let r = db.replica_list();
    assert_eq!(
        (r[0].host.as_str(), r[0].port, r[0].weight),
        ("10.0.0.2", 5434, 1)
    );
    assert_eq!(
        (r[1].host.as_str(), r[1].port, r[1].weight),
        ("::1", 5435, 3)
    );
    assert_eq!((r[2].host.as_str(), r[2].port), ("::1", 5436));
    assert_eq!(
        key_of("[databases.app]\nreplicas = [\"10.0.0.2\"]\n"),
        "databases.app.replicas[0]"
    );
    assert_eq!(
        key_of("[databases.app]\nreplicas = [{ host = \"h\", weight = 0 }]\n"),
        "databases.app.replicas[0].weight"
    );
    assert_eq!(
        key_of("[databases.app]\nread_from_primary = \"sometimes\"\n"),
        "databases.app.read_from_primary"
    );
    assert_eq!(
        key_of(&format!("health_check_interval = 0\n{MINIMAL}")),
        "health_check_interval"
    );
}

/// The documented file must list every general key with exactly the code's default.
#[test]
fn documented_defaults_match_code() {
    let text = include_str!("../../config/pgsluice.toml");
    let mut documented: toml::Table = text.parse().unwrap();
    documented.remove("databases");
    documented.remove("users");
    let code = toml::Table::try_from(General::default()).unwrap();
    assert_eq!(documented, code);
    Config::parse(text, "config/pgsluice.toml").unwrap();
}

#[test]
fn the_unix_socket_settings_are_checked() {
    for bad in [
        "unix_socket_mode = \"0800\"",
        "unix_socket_mode = \"rwx\"",
        "unix_socket_mode = \"1777\"",
    ] {
        assert_eq!(key_of(&format!("{bad}\n{MINIMAL}")), "unix_socket_mode");
    }
    let long = format!("/{}", "d".repeat(100));
    for bad in ["run/pgsluice", "@pgsluice", long.as_str()] {
        let text = format!("unix_socket_dir = \"{bad}\"\n{MINIMAL}");
        assert_eq!(key_of(&text), "unix_socket_dir", "{bad}");
    }
    assert_eq!(file_mode("0770"), Ok(0o770));
    assert_eq!(
        file_mode("511"),
        Ok(0o777),
        "decimal without a leading 0, as strtol reads it"
    );
    assert_eq!(file_mode("0"), Ok(0));
    let text = format!("unix_socket_dir = \"/run/\"\nunix_socket_mode = \"0700\"\n{MINIMAL}");
    assert!(Config::parse(&text, "t.toml").is_ok());
}

#[test]
fn a_server_certificate_needs_its_key() {
    let text = format!("server_tls_cert_file = \"/x.pem\"\n{MINIMAL}");
    assert_eq!(key_of(&text), "server_tls_key_file");
    let text = format!(
        "server_tls_cert_file = \"/no/x.pem\"\nserver_tls_key_file = \"/no/x.key\"\n{MINIMAL}"
    );
    assert_eq!(
        key_of(&text),
        "server_tls_cert_file",
        "the file is read at load"
    );
}

#[test]
fn auth_type_hba_reads_its_file_at_load() {
    let text = format!("auth_type = \"hba\"\n{MINIMAL}");
    assert_eq!(key_of(&text), "auth_hba_file");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hba.conf");
    std::fs::write(
        &path,
        "local all all trust\nhost all all 10.0.0.0/8 ident\n",
    )
    .unwrap();
    let text = format!(
        "auth_type = \"hba\"\nauth_hba_file = \"{}\"\n{MINIMAL}",
        path.display()
    );
    match Config::parse(&text, "t.toml") {
        Err(ConfigError::Key { key, message, .. }) => {
            assert_eq!(key, "auth_hba_file");
            assert!(
                message.contains("hba.conf:2: method \"ident\""),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    std::fs::write(&path, "local all all trust\n").unwrap();
    let c = Config::parse(&text, "t.toml").unwrap();
    let local = hba::Conn::Local;
    assert_eq!(
        c.hba.unwrap().method(local, "app", "u"),
        Some(hba::Method::Trust)
    );
}

#[test]
fn certificate_authentication_needs_a_ca() {
    let text = format!("auth_type = \"cert\"\n{MINIMAL}");
    assert_eq!(key_of(&text), "client_tls_ca_file");
}
