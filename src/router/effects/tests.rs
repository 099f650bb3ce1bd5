//! The session-effects reader's tests: settings, features, sequence use, and the prefilter.
use super::*;

fn settings(sql: &str) -> (Vec<String>, Vec<String>) {
    let fx = of(sql.as_bytes());
    (fx.settings, fx.resets)
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn sequence_values_read_and_set_are_seen() {
    let seq = |sql: &str| of(sql.as_bytes()).sequences;
    let reads = Sequences {
        reads: true,
        advances: false,
    };
    let advances = Sequences {
        reads: false,
        advances: true,
    };
    assert_eq!(seq("SELECT lastval()"), reads);
    assert_eq!(seq("select CURRVAL('t_id_seq')"), reads);
    assert_eq!(seq("SELECT pg_catalog.currval ( 's' )"), reads);
    assert_eq!(seq("SELECT \"lastval\"()"), reads);
    assert_eq!(seq("SELECT nextval('s')"), advances);
    assert_eq!(seq("SELECT setval('s', 4)"), advances);
    // After a command that may call nextval, a read is not of an earlier one.
    let none = Sequences::default();
    assert_eq!(seq("INSERT INTO t VALUES (1); SELECT lastval()"), none);
    assert_eq!(
        seq("BEGIN; INSERT INTO t VALUES (1); SELECT currval('s')"),
        none
    );
    assert_eq!(seq("SELECT nextval('s'), currval('s')"), advances);
    assert_eq!(seq("SELECT lastval(); INSERT INTO t VALUES (1)"), reads);
    assert_eq!(seq("SELECT currval FROM t"), Sequences::default());
    assert_eq!(seq("SELECT 'lastval()'"), Sequences::default());
    assert_eq!(
        seq("SELECT interval '1 day', v FROM vals"),
        Sequences::default()
    );
    // Sequence use alone is no effect on the session beyond the transaction.
    assert!(of(b"SELECT nextval('s')").is_empty());
    for sql in [
        "INSERT INTO t VALUES (1)",
        " (insert",
        "COPY t FROM STDIN",
        "call p()",
        "DO $$ $$",
        "merge into t",
    ] {
        assert!(may_advance_sequences(sql.as_bytes()), "{sql}");
    }
    assert!(may_advance_sequences(b"BEGIN; INSERT INTO t VALUES (1)"));
    assert!(may_advance_sequences(b"SELECT 1;(COPY t FROM STDIN)"));
    for sql in [
        "SELECT 1",
        "inserts",
        "UPDATE t SET a = 1",
        "",
        "WITH x AS (INSERT INTO t VALUES (1)) SELECT 1",
        "SELECT ';insert'",
    ] {
        assert!(!may_advance_sequences(sql.as_bytes()), "{sql}");
    }
}

#[test]
fn statements_without_effects_cost_one_scan() {
    for sql in [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
        "SELECT t.total_amount FROM tt t WHERE t.x_y = 'a;b'",
        "SELECT pgbench_tellers.tbalance FROM pgbench_tellers; SELECT 1; SELECT '\x7f\x1b'",
        "INSERT INTO t VALUES (1)",
        "BEGIN",
        "COMMIT",
        "UPDATE pgbench_accounts SET abalance = abalance + -5 WHERE aid = 3",
        "INSERT INTO pgbench_history (tid, mtime) VALUES (1, CURRENT_TIMESTAMP)",
        "SELECT my_pg_advisory_lock(1), xsetval(2), user_settings.level FROM user_settings",
    ] {
        assert!(!mentions_any(sql.as_bytes()), "{sql}");
        assert!(of(sql.as_bytes()).is_empty());
    }
    // Mentions a word but does nothing to the session.
    assert!(of(b"UPDATE t SET a = 1").is_empty());
    assert!(of(b"SET LOCAL statement_timeout = 5").is_empty());
    assert!(of(b"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").is_empty());
    assert!(of(b"SELECT 'SET search_path TO x'").is_empty());
    // Found wherever they are in the text, in any case.
    for sql in [
        "select 1 from t;\n  SET search_path = a",
        "SELECT x INTO TEMPORARY t2 FROM t",
        "SELECT a, b, c, d, e, f, g, pg_catalog.PG_ADVISORY_LOCK(1)",
        "SELECT 12345678 INTO temp t3",
        "SELECT(pg_try_advisory_lock(1))",
        "select set_config('a', 'b', false)",
    ] {
        assert!(!of(sql.as_bytes()).is_empty(), "{sql}");
    }
    // The sequence functions, wherever their `v` is.
    for sql in [
        "SELECT setval('s', 1)",
        "SELECT nextval('s')",
        "select 1;select CURRVAL('s')",
        "SELECT(lastval())",
    ] {
        assert!(mentions_any(sql.as_bytes()), "{sql}");
        assert_ne!(of(sql.as_bytes()).sequences, Sequences::default(), "{sql}");
    }
    // A word right after a string's closing `$$` or a parameter `$1` is a word of its own
    // (the first found by the `sql` fuzz target).
    for sql in [
        &b"SSA;;;((((\x06(((\x01\x00\x00\x00\x00\x00\x00\x06(((((((($$x\\\xd8\\\xd8/(((\x06$$lastval((( s\\\xd8;/"[..],
        b"SELECT $$x$$lastval()",
        b"SELECT $1currval('s')",
        b"SELECT $$x$$pg_advisory_lock(1)",
        b"SELECT * FROM $$x$$pg_temp.t",
    ] {
        assert_eq!(of(sql), read(sql), "{sql:?}");
        assert_ne!(read(sql), Effects::default(), "{sql:?}");
    }
}

#[test]
fn every_form_of_set_names_its_setting() {
    let cases: &[(&str, &[&str], &[&str])] = &[
        ("SET search_path TO tenant_a, public", &["search_path"], &[]),
        ("set session statement_timeout = '5s'", &["statement_timeout"], &[]),
        ("SET myapp.tenant_id = 42", &["myapp.tenant_id"], &[]),
        ("SET TIME ZONE 'Europe/Paris'", &["timezone"], &[]),
        ("SET NAMES 'LATIN1'", &["client_encoding"], &[]),
        ("SET SCHEMA 'app'", &["search_path"], &[]),
        ("SET XML OPTION DOCUMENT", &["xmloption"], &[]),
        ("SET ROLE reporting", &["role"], &[]),
        ("SET ROLE NONE", &["role"], &["role"]),
        (
            "SET SESSION AUTHORIZATION bob",
            &["session_authorization", "role"],
            &[],
        ),
        ("SET work_mem TO DEFAULT", &["work_mem"], &["work_mem"]),
        ("SET TIME ZONE LOCAL", &["timezone"], &["timezone"]),
        ("RESET datestyle", &["datestyle"], &["datestyle"]),
        ("RESET TIME ZONE", &["timezone"], &["timezone"]),
        ("RESET myapp.tenant_id", &["myapp.tenant_id"], &["myapp.tenant_id"]),
        (
            "SELECT set_config('search_path', 'x', false), pg_catalog.set_config( E'App.X', $1, false)",
            &["search_path", "app.x"],
            &[],
        ),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            &[
                "default_transaction_isolation",
                "default_transaction_read_only",
                "default_transaction_deferrable",
            ],
            &[],
        ),
        ("SET a = 1; SET b TO 2", &["a", "b"], &[]),
    ];
    for (sql, set, reset) in cases {
        assert_eq!(settings(sql), (names(set), names(reset)), "{sql}");
    }
    assert!(of(b"RESET ALL").reset_all);
    assert!(of(b"DISCARD ALL").reset_all);
    assert!(of(b"SELECT set_config($1, $2, false)").unnamed_setting);
    assert!(of(b"SET \"Quoted\" = 1").unnamed_setting);
    // Found by the `sql` fuzz target: the prefilter passed it over, the reader did not.
    for other in [
        &b"SELECT my_set_config($1, 1)"[..],
        b"SELECT \xacset_config($1)",
    ] {
        assert!(read(other).is_empty(), "{other:?}");
    }
}

#[test]
fn session_features_start_and_end() {
    use Feature::*;
    let cases: &[(&str, &[Feature], &[Feature])] = &[
        ("SELECT pg_advisory_lock(42)", &[AdvisoryLock], &[]),
        (
            "SELECT pg_try_advisory_lock_shared(1, 2)",
            &[AdvisoryLock],
            &[],
        ),
        ("SELECT pg_advisory_xact_lock(42)", &[], &[]),
        ("SELECT pg_advisory_unlock(42)", &[], &[AdvisoryLock]),
        ("SELECT pg_advisory_unlock_all()", &[], &[AdvisoryLock]),
        ("LISTEN jobs", &[Listen], &[]),
        ("UNLISTEN *", &[], &[Listen]),
        ("CREATE TEMP TABLE t (x int)", &[TempTable], &[]),
        ("create global temporary table t (x int)", &[TempTable], &[]),
        ("CREATE TABLE pg_temp.t (x int)", &[TempTable], &[]),
        ("SELECT * INTO TEMP t2 FROM t", &[TempTable], &[]),
        ("CREATE TABLE temps (x int)", &[], &[]),
        ("CREATE TEMP TABLE t (x int) ON COMMIT DROP", &[], &[]),
        ("DROP TABLE t", &[], &[TempTable]),
        ("DISCARD TEMP", &[], &[TempTable]),
        (
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            &[HoldCursor],
            &[],
        ),
        ("DECLARE c CURSOR FOR SELECT 1", &[], &[]),
        ("CLOSE ALL", &[], &[HoldCursor]),
        ("PREPARE p AS SELECT 1", &[Prepare], &[]),
        ("PREPARE TRANSACTION 'x'", &[], &[]),
        ("DEALLOCATE ALL", &[], &[Prepare]),
        ("LOAD 'auto_explain'", &[Load], &[]),
    ];
    for (sql, start, end) in cases {
        let fx = of(sql.as_bytes());
        let set = |list: &[Feature]| {
            let mut f = Features::NONE;
            list.iter().for_each(|x| f.insert(*x));
            f
        };
        assert_eq!((fx.start, fx.end), (set(start), set(end)), "{sql}");
    }
    let all = of(b"DISCARD ALL");
    assert!(all.end.contains(Feature::AdvisoryLock) && !all.end.contains(Feature::Load));
    assert_eq!(
        of(b"SELECT pg_advisory_lock(1); LISTEN x").start.names(),
        "advisory_lock,listen"
    );
}
