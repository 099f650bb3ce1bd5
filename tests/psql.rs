//! psql through pgsluice: simple queries, \copy both ways, auth methods and login errors.

mod support;

use support::{primary, stdout, Pooler, APP_PASSWORD};

#[test]
fn psql_simple_queries_and_copy() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "auth_type = \"scram-sha-256\"\ndefault_pool_size = 2");
    assert_eq!(stdout(&pooler.psql("SELECT 1 + 1")), "2");
    stdout(&pooler.psql("CREATE TABLE t (id int, name text)"));
    let out = pooler.psql("INSERT INTO t VALUES (1, 'a'), (2, 'b'); SELECT count(*) FROM t");
    assert_eq!(stdout(&out), "2");

    let dir = std::env::temp_dir().join(format!("pgsluice-copy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rows.csv");
    let rows: String = (0..5000).map(|i| format!("{i},name {i}\n")).collect();
    std::fs::write(&file, rows).unwrap();
    let copy_in = format!("\\copy t FROM '{}' WITH (FORMAT csv)", file.display());
    stdout(&pooler.psql(&copy_in));
    assert_eq!(stdout(&pooler.psql("SELECT count(*) FROM t")), "5002");
    let out_file = dir.join("out.csv");
    let copy_out = format!(
        "\\copy (SELECT * FROM t ORDER BY id) TO '{}' WITH (FORMAT csv)",
        out_file.display()
    );
    stdout(&pooler.psql(&copy_out));
    assert_eq!(
        std::fs::read_to_string(&out_file).unwrap().lines().count(),
        5002
    );
    std::fs::remove_dir_all(&dir).unwrap();

    // A multi-statement string in one Query, and an error in the middle of a session.
    let out = pooler.psql_as(
        "app",
        APP_PASSWORD,
        "app",
        &["-c", "SELECT 1; SELECT 2", "-c", "SELECT 3"],
    );
    assert_eq!(stdout(&out), "1\n2\n3");
    let err = pooler.psql("SELECT * FROM no_such_table");
    assert!(String::from_utf8_lossy(&err.stderr).contains("does not exist"));
}

#[test]
fn logins_with_each_auth_method() {
    let pg = primary();
    for auth in ["scram-sha-256", "md5"] {
        let pooler = Pooler::start(&pg, &format!("auth_type = \"{auth}\""));
        // Client side by `auth`; server side: SCRAM (app), md5 (md5user), cleartext.
        assert_eq!(
            stdout(&pooler.psql_as("app", APP_PASSWORD, "app", &["-c", "SELECT current_user"])),
            "app"
        );
        assert_eq!(
            stdout(&pooler.psql_as("md5user", "md5 pw", "app", &["-c", "SELECT current_user"])),
            "md5user"
        );
        assert_eq!(
            stdout(&pooler.psql_as(
                "cleartext_user",
                "clear pw",
                "app",
                &["-c", "SELECT current_user"]
            )),
            "cleartext_user"
        );
    }
}

#[test]
fn login_errors_use_postgres_codes() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "auth_type = \"scram-sha-256\"");
    let wrong = pooler.psql_as("app", "wrong", "app", &["-c", "SELECT 1"]);
    assert!(!wrong.status.success());
    let text = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        text.contains("password authentication failed for user \"app\""),
        "{text}"
    );
    let unknown = pooler.psql_as("nobody", "wrong", "app", &["-c", "SELECT 1"]);
    let text_unknown = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        text_unknown.contains("password authentication failed for user \"nobody\""),
        "{text_unknown}"
    );
    let nodb = pooler.psql_as("app", APP_PASSWORD, "nodb", &["-c", "SELECT 1"]);
    let text = String::from_utf8_lossy(&nodb.stderr);
    assert!(text.contains("no such database: nodb"), "{text}");
    // The pooler keeps serving after all that.
    assert_eq!(stdout(&pooler.psql("SELECT 42")), "42");
}
