//! auth_query: users the configuration does not list log in with the secret the server keeps
//! (md5 or SCRAM), the pools log in to servers with it (SCRAM passthrough), an expired role
//! or a wrong password is refused, and a rotated password works without a reload.

mod support;

use std::process::Output;
use support::{primary, stdout, Pooler};

const SCRAM_PW: &str = "scram pw";
const MD5_PW: &str = "md5 pw 2";

/// Roles the configuration does not list, made on `pg`.
fn roles(pg: &pgsluice::localpg::LocalPostgres) {
    pg.psql(&format!(
        "CREATE ROLE dyn_scram LOGIN PASSWORD '{SCRAM_PW}'"
    ))
    .unwrap();
    pg.psql(&format!(
        "SET password_encryption = 'md5'; CREATE ROLE dyn_md5 LOGIN PASSWORD '{MD5_PW}'"
    ))
    .unwrap();
    pg.psql("CREATE ROLE expired LOGIN PASSWORD 'old pw' VALID UNTIL '2001-01-01'")
        .unwrap();
    pg.psql("GRANT ALL ON DATABASE app TO dyn_scram, dyn_md5, expired")
        .unwrap();
}

fn whoami(pooler: &Pooler, user: &str, password: &str) -> Output {
    pooler.psql_as(
        user,
        password,
        "app",
        &["-c", "BEGIN; SELECT current_user; COMMIT"],
    )
}

fn refused(out: &Output) -> bool {
    !out.status.success()
        && String::from_utf8_lossy(&out.stderr).contains("password authentication failed")
}

#[test]
fn users_not_in_the_configuration_are_looked_up_and_passed_through() {
    let pg = primary();
    roles(&pg);
    // PgBouncer's default query, run as the trusted superuser; md5 as the guides set it up.
    let pooler = Pooler::start(&pg, "auth_type = \"md5\"\nauth_user = \"postgres\"");

    // SCRAM to the client, then SCRAM to the server with the keys the client's proof gave.
    let out = whoami(&pooler, "dyn_scram", SCRAM_PW);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "dyn_scram");
    let out = whoami(&pooler, "dyn_md5", MD5_PW);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "dyn_md5");

    assert!(refused(&whoami(&pooler, "dyn_scram", "wrong")));
    assert!(refused(&whoami(&pooler, "dyn_md5", "wrong")));
    assert!(refused(&whoami(&pooler, "expired", "old pw")));
    assert!(refused(&whoami(&pooler, "nobody", "x")));

    // Rotated: md5 answers hold only the pooler's salt, so the new password works at once.
    pg.psql("SET password_encryption = 'md5'; ALTER ROLE dyn_md5 PASSWORD 'rotated md5'")
        .unwrap();
    let out = whoami(&pooler, "dyn_md5", "rotated md5");
    assert!(out.status.success(), "{out:?}");
    assert!(refused(&whoami(&pooler, "dyn_md5", MD5_PW)));

    // SCRAM proofs are made with the kept salt: the first attempt after the rotation fails
    // and refreshes, the next one succeeds, and the pools log in with the new keys.
    pg.psql("ALTER ROLE dyn_scram PASSWORD 'rotated scram'")
        .unwrap();
    let first = whoami(&pooler, "dyn_scram", "rotated scram");
    let out = if first.status.success() {
        first
    } else {
        whoami(&pooler, "dyn_scram", "rotated scram")
    };
    assert!(out.status.success(), "{out:?}");
    // A new server login with the new keys (the old servers were of the old password).
    pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'dyn_scram'")
        .unwrap();
    let out = whoami(&pooler, "dyn_scram", "rotated scram");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "dyn_scram");
}

#[test]
fn a_lookup_function_as_pgbouncer_recommends() {
    let pg = primary();
    roles(&pg);
    pg.psql("CREATE ROLE lookup LOGIN PASSWORD 'lookup pw'")
        .unwrap();
    pg.psql_in(
        "app",
        "CREATE SCHEMA pooler; \
         CREATE FUNCTION pooler.user_lookup(i_username text, OUT uname text, OUT phash text) \
         RETURNS record AS $$ BEGIN \
           SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END \
           FROM pg_authid WHERE rolname = i_username AND rolcanlogin INTO uname, phash; \
           RETURN; END $$ LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp; \
         REVOKE ALL ON FUNCTION pooler.user_lookup(text) FROM public; \
         GRANT USAGE ON SCHEMA pooler TO lookup; \
         GRANT EXECUTE ON FUNCTION pooler.user_lookup(text) TO lookup",
    )
    .unwrap();
    // Set for the database only, with auth_user's password in [users].
    let text = format!(
        "listen_port = 0\nauth_type = \"scram-sha-256\"\nhttp_listen = \"127.0.0.1:0\"\n\
         [databases.app]\nport = {}\nauth_user = \"lookup\"\n\
         auth_query = \"SELECT * FROM pooler.user_lookup($1)\"\n\
         [users.lookup]\npassword = \"lookup pw\"\n",
        pg.port
    );
    let pooler = Pooler::with_config(pgsluice::config::Config::parse(&text, "t.toml").unwrap());
    let out = whoami(&pooler, "dyn_scram", SCRAM_PW);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "dyn_scram");
    assert!(refused(&whoami(&pooler, "expired", "old pw")));
    assert!(refused(&whoami(&pooler, "dyn_scram", "wrong")));

    // The lookup's own login failing is a clear error, not a hang.
    let text = text.replace("password = \"lookup pw\"", "password = \"not it\"");
    let broken = Pooler::with_config(pgsluice::config::Config::parse(&text, "t.toml").unwrap());
    let out = whoami(&broken, "dyn_scram", SCRAM_PW);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("password lookup failed"), "{err}");
}
