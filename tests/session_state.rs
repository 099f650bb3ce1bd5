//! Transaction mode with two replicas behaves as one server for a client's session state:
//! its settings follow it to every server and reach no one else, RESET goes back to its own
//! startup values, and session-only features (advisory locks, temporary tables, SQL PREPARE,
//! WITH HOLD cursors, LISTEN) pin it to its server until it undoes them or leaves.

mod support;

use std::process::Command;
use std::time::Duration;
use support::{connect, one, Pooler, Replicated, APP_PASSWORD};
use tokio_postgres::{Client, SimpleQueryMessage};

/// Every first column `sql` returns, across its statements.
async fn column(c: &Client, sql: &str) -> Vec<String> {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_owned()),
            _ => None,
        })
        .collect()
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_owned()).unwrap_or_default()
}

const ADMIN: &str = "admin_users = [\"app\"]";
const PATH: &str = "SHOW search_path";
const TIMEOUT: &str = "SELECT pg_catalog.current_setting('statement_timeout')";

/// 20 clients run probes, in autocommit and in transactions, while `check` runs.
async fn with_probes<F: std::future::Future<Output = ()>>(pooler: &Pooler, check: F) -> usize {
    let mut probes = Vec::new();
    for i in 0..20 {
        let c = connect(pooler, "app", APP_PASSWORD).await;
        probes.push(tokio::spawn(async move {
            let mut seen = 0;
            for round in 0..14 {
                let values = if (i + round) % 2 == 0 {
                    vec![one(&c, PATH).await, one(&c, TIMEOUT).await]
                } else {
                    column(&c, &format!("BEGIN; {PATH}; {TIMEOUT}; COMMIT")).await
                };
                assert_eq!(
                    values,
                    ["\"$user\", public", "0"],
                    "a probe saw another's SET"
                );
                seen += 1;
            }
            seen
        }));
    }
    check.await;
    let mut total = 0;
    for p in probes {
        total += p.await.expect("probe");
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_set_follows_its_client_and_reaches_no_one_else() {
    let cluster = Replicated::start();
    cluster.primary.psql("GRANT md5user TO app").unwrap();
    let pooler = cluster.pooler(&format!("default_pool_size = 3\n{ADMIN}"), "");
    let a = connect(&pooler, "app", APP_PASSWORD).await;
    a.batch_execute("SET search_path TO tenant_a, public")
        .await
        .unwrap();
    a.batch_execute("SET statement_timeout = '4321ms'")
        .await
        .unwrap();
    let probes = with_probes(&pooler, async {
        for _ in 0..50 {
            assert_eq!(one(&a, PATH).await, "tenant_a, public");
            assert_eq!(one(&a, TIMEOUT).await, "4321ms");
        }
        for _ in 0..50 {
            let tx = column(&a, &format!("BEGIN; {PATH}; {TIMEOUT}; COMMIT")).await;
            assert_eq!(tx, ["tenant_a, public", "4321ms"]);
        }
    })
    .await;
    assert_eq!(probes, 20 * 14);

    // Inside a transaction: the client's only if it commits.
    a.batch_execute("BEGIN; SET search_path TO tenant_b; COMMIT")
        .await
        .unwrap();
    assert_eq!(one(&a, PATH).await, "tenant_b");
    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute("SET search_path TO tenant_c")
        .await
        .unwrap();
    assert_eq!(one(&a, PATH).await, "tenant_c");
    a.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(one(&a, PATH).await, "tenant_b");
    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute("SET search_path TO tenant_d")
        .await
        .unwrap();
    assert!(a.batch_execute("SELECT 1/0").await.is_err());
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(one(&a, PATH).await, "tenant_b");
    let failed = a
        .batch_execute("SET search_path TO tenant_e; SELECT 1/0")
        .await;
    assert_eq!(sqlstate(&failed.unwrap_err()), "22012");
    assert_eq!(one(&a, PATH).await, "tenant_b");
    a.batch_execute("BEGIN; SET LOCAL search_path TO tenant_f; COMMIT")
        .await
        .unwrap();
    assert_eq!(one(&a, PATH).await, "tenant_b");
    // A SET the server rejects is PostgreSQL's error and changes nothing.
    let bad = a.batch_execute("SET statement_timeout = 'soon'").await;
    assert_eq!(sqlstate(&bad.unwrap_err()), "22023");
    assert_eq!(one(&a, TIMEOUT).await, "4321ms");
    // set_config, custom settings, SET ROLE and RESET.
    a.batch_execute("SELECT set_config('myapp.tenant', '42', false)")
        .await
        .unwrap();
    a.batch_execute("SET ROLE md5user").await.unwrap();
    for _ in 0..6 {
        assert_eq!(
            column(
                &a,
                "SELECT current_setting('myapp.tenant'); SELECT current_user"
            )
            .await,
            ["42", "md5user"]
        );
    }
    a.batch_execute("RESET ROLE; RESET search_path; RESET ALL")
        .await
        .unwrap();
    for _ in 0..6 {
        assert_eq!(one(&a, PATH).await, "\"$user\", public");
        assert_eq!(one(&a, TIMEOUT).await, "0");
        assert_eq!(one(&a, "SELECT current_user").await, "app");
    }
    // After all that, the others still see none of it.
    assert_eq!(with_probes(&pooler, async {}).await, 20 * 14);
}

/// psql runs `script` statement by statement (as a file), with `env` set.
fn psql_script(pooler: &Pooler, env: &[(&str, &str)], script: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("script.sql");
    std::fs::write(&file, script).unwrap();
    let out = Command::new(pgsluice::localpg::pg_bindir().join("psql"))
        .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&file)
        .arg(pooler.conn_str("app", APP_PASSWORD))
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_goes_back_to_the_clients_own_startup_value() {
    let cluster = Replicated::start();
    for mode in ["transaction", "session"] {
        let pooler = cluster.pooler(&format!("pool_mode = \"{mode}\""), "");
        let script = "SHOW datestyle;\n\
                      SET datestyle = 'SQL, DMY';\n\
                      SHOW datestyle;\n\
                      RESET datestyle;\n\
                      SHOW datestyle;\n\
                      SET datestyle = 'SQL, DMY';\n\
                      RESET ALL;\n\
                      SHOW datestyle;\n\
                      SET datestyle TO DEFAULT;\n\
                      SELECT current_setting('datestyle');\n\
                      SHOW timezone;\n";
        let env = [("PGDATESTYLE", "Postgres, MDY"), ("PGTZ", "Asia/Tokyo")];
        let out = psql_script(&pooler, &env, script);
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            [
                "Postgres, MDY",
                "SQL, DMY",
                "Postgres, MDY",
                "Postgres, MDY",
                "Postgres, MDY",
                "Asia/Tokyo"
            ],
            "{mode} mode"
        );
        // A client without those startup values gets the server's.
        let plain = psql_script(&pooler, &[], "SHOW datestyle;\nSHOW timezone;\n");
        assert!(plain.starts_with("ISO, MDY\n"), "{mode} mode: {plain}");
        assert!(!plain.contains("Asia/Tokyo"), "{mode} mode: {plain}");
    }
}

/// A superuser's setting stays with it after SET SESSION AUTHORIZATION to another user, as on
/// one server; a server brought in line for it takes the setting before the identity (the
/// other way round, the setting is refused and the client was lost: PostgreSQL's own
/// updatable_views test through a routed pgsluice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superuser_setting_follows_its_client_past_set_session_authorization() {
    let pg = support::primary();
    let text = format!(
        "listen_port = 0\nauth_type = \"trust\"\ndefault_pool_size = 2\n\
         [databases.app]\nport = {}\n[users.postgres]\n",
        pg.port
    );
    let pooler = Pooler::with_config(pgsluice::config::Config::parse(&text, "t.toml").unwrap());
    let conn = format!(
        "host=127.0.0.1 port={} user=postgres dbname=app",
        pooler.port()
    );
    let connect = || async {
        let (c, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        c
    };
    let (a, holder) = (connect().await, connect().await);
    a.batch_execute("SET session_replication_role = replica; SET SESSION AUTHORIZATION app")
        .await
        .unwrap();
    // The one server so far is held: a's next work gets a new one, brought in line.
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    assert_eq!(one(&a, "SHOW session_replication_role").await, "replica");
    assert_eq!(one(&a, "SELECT session_user").await, "app");
    holder.batch_execute("COMMIT").await.unwrap();
}

/// `pgsluice_pins_total{feature=…}` as the pooler counts it now.
fn pins(pooler: &Pooler, feature: &str) -> f64 {
    let text = pooler.metrics();
    text.lines()
        .find(|l| {
            l.starts_with("pgsluice_pins_total{") && l.contains(&format!("feature=\"{feature}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_advisory_lock_pins_until_unlocked_and_dies_with_its_client() {
    let cluster = Replicated::start();
    let pooler = cluster.pooler(&format!("default_pool_size = 3\n{ADMIN}"), "");
    let a = connect(&pooler, "app", APP_PASSWORD).await;
    assert_eq!(one(&a, "SELECT pg_advisory_lock(42)").await, "");
    assert_eq!(pins(&pooler, "advisory_lock"), 1.0);
    let pinned = pooler.admin_column("SHOW CLIENTS", "pinned");
    assert!(pinned.contains(&"advisory_lock".to_owned()), "{pinned:?}");
    let churn = with_probes(&pooler, async {
        for i in 0..10 {
            a.batch_execute(&format!("BEGIN; SELECT {i}; COMMIT"))
                .await
                .unwrap();
            // Its own lock again: re-entrant on its own server, never a wait on another.
            assert_eq!(one(&a, "SELECT pg_try_advisory_lock(42)").await, "t");
            assert_eq!(one(&a, "SELECT pg_advisory_unlock(42)").await, "t");
        }
    })
    .await;
    assert_eq!(churn, 20 * 14);
    assert_eq!(one(&a, "SELECT pg_advisory_unlock(42)").await, "t");
    assert_eq!(one(&a, "SELECT pg_advisory_unlock(42)").await, "f");
    let unpinned = pooler.admin_column("SHOW CLIENTS", "pinned");
    assert!(unpinned.iter().all(|p| p.is_empty()), "{unpinned:?}");

    // Held when the client goes: free for others within a second.
    assert_eq!(one(&a, "SELECT pg_advisory_lock(7)").await, "");
    drop(a);
    let b = connect(&pooler, "app", APP_PASSWORD).await;
    let mut got = false;
    for _ in 0..100 {
        if one(&b, "SELECT pg_try_advisory_lock(7)").await == "t" {
            got = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(got, "the departed client's lock was never released");
    assert_eq!(one(&b, "SELECT pg_advisory_unlock_all()").await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_tables_prepare_and_hold_cursors_keep_their_server() {
    let cluster = Replicated::start();
    let pooler = cluster.pooler(&format!("default_pool_size = 3\n{ADMIN}"), "");
    let a = connect(&pooler, "app", APP_PASSWORD).await;
    a.batch_execute("CREATE TEMP TABLE scratch (x int)")
        .await
        .unwrap();
    for i in 0..5 {
        a.batch_execute(&format!("BEGIN; INSERT INTO scratch VALUES ({i}); COMMIT"))
            .await
            .unwrap();
        assert_eq!(
            one(&a, "SELECT count(*) FROM scratch").await,
            (i + 1).to_string()
        );
    }
    let b = connect(&pooler, "app", APP_PASSWORD).await;
    let other = b.simple_query("SELECT count(*) FROM scratch").await;
    assert_eq!(sqlstate(&other.unwrap_err()), "42P01");
    a.batch_execute("DISCARD TEMP").await.unwrap();

    a.batch_execute("PREPARE p(int) AS SELECT $1 * 2")
        .await
        .unwrap();
    for i in 0..5 {
        assert_eq!(
            one(&a, &format!("EXECUTE p({i})")).await,
            (i * 2).to_string()
        );
    }
    a.batch_execute("DEALLOCATE ALL").await.unwrap();

    a.batch_execute("DECLARE c CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 6) g")
        .await
        .unwrap();
    assert_eq!(column(&a, "FETCH 2 FROM c").await, ["1", "2"]);
    a.batch_execute("BEGIN; SELECT 1; COMMIT").await.unwrap();
    assert_eq!(column(&a, "FETCH 2 FROM c").await, ["3", "4"]);
    a.batch_execute("CLOSE ALL").await.unwrap();
    let unpinned = pooler.admin_column("SHOW CLIENTS", "pinned");
    assert!(unpinned.iter().all(|p| p.is_empty()), "{unpinned:?}");
    for f in ["temp_table", "prepare", "hold_cursor"] {
        assert_eq!(pins(&pooler, f), 1.0, "{f}");
    }
    // Gone with the temporary table's client: nothing of it reaches the next.
    a.batch_execute("CREATE TEMP TABLE leftover (x int)")
        .await
        .unwrap();
    drop(a);
    for _ in 0..6 {
        let c = connect(&pooler, "app", APP_PASSWORD).await;
        let r = c.simple_query("SELECT * FROM leftover").await;
        assert_eq!(sqlstate(&r.unwrap_err()), "42P01");
    }
}

type Notes = tokio::sync::mpsc::UnboundedReceiver<(String, String)>;

/// A client whose notifications come out of the receiver, as (channel, payload).
async fn listening_client(pooler: &Pooler) -> (Client, Notes) {
    let (client, mut conn) =
        tokio_postgres::connect(&pooler.conn_str("app", APP_PASSWORD), tokio_postgres::NoTls)
            .await
            .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = futures_util::StreamExt::next(&mut messages).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    (client, rx)
}

/// `a`, listening on `jobs`, runs 5 transactions; then `b` notifies `jobs`, and `a` hears it
/// within a second.
async fn notified_after_transactions(a: &Client, notes: &mut Notes, b: &Client) {
    for i in 0..5 {
        a.batch_execute(&format!("BEGIN; SELECT {i}; COMMIT"))
            .await
            .unwrap();
    }
    b.batch_execute("NOTIFY jobs, 'first'").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(1), notes.recv()).await;
    assert_eq!(
        got.expect("notification within 1 s"),
        Some(("jobs".to_owned(), "first".to_owned()))
    );
}

/// Backends of the primary that last ran a LISTEN: the listening connections.
fn listening_backends(cluster: &Replicated) -> usize {
    cluster
        .primary
        .psql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'")
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_listen_carries_every_client_on_one_connection() {
    let cluster = Replicated::start();
    let pooler = cluster.pooler(
        &format!("default_pool_size = 3\nmax_client_conn = 400\n{ADMIN}"),
        "",
    );
    let (a, mut a_notes) = listening_client(&pooler).await;
    a.batch_execute("LISTEN jobs").await.unwrap();
    let b = connect(&pooler, "app", APP_PASSWORD).await;
    notified_after_transactions(&a, &mut a_notes, &b).await;
    // Not pinned: the shared connection listens for it.
    let pinned = pooler.admin_column("SHOW CLIENTS", "pinned");
    assert!(pinned.iter().all(|p| p.is_empty()), "{pinned:?}");

    // 200 clients on 20 channels, one listening connection.
    let mut clients = Vec::new();
    for i in 0..200 {
        let (c, notes) = listening_client(&pooler).await;
        c.batch_execute(&format!("LISTEN ch{}", i % 20))
            .await
            .unwrap();
        clients.push((i % 20, c, notes));
    }
    assert_eq!(listening_backends(&cluster), 1);
    for ch in 0..20 {
        b.batch_execute(&format!("NOTIFY ch{ch}, 'to {ch}'"))
            .await
            .unwrap();
    }
    for (ch, _, notes) in &mut clients {
        let got = tokio::time::timeout(Duration::from_secs(5), notes.recv()).await;
        assert_eq!(
            got.expect("every listener gets its channel's notification"),
            Some((format!("ch{ch}"), format!("to {ch}")))
        );
        assert!(notes.try_recv().is_err(), "only its own channel's");
    }
    // UNLISTEN takes a client's channels away; the others still hear. A notification on a
    // channel it does listen on, sent after, shows whether the one before reached it.
    for (_, c, _) in clients.iter().filter(|(ch, _, _)| *ch == 0) {
        c.batch_execute("UNLISTEN *; LISTEN marker").await.unwrap();
    }
    b.batch_execute(
        "BEGIN; NOTIFY ch0, 'nobody'; NOTIFY ch1, 'still'; NOTIFY marker, 'after'; COMMIT",
    )
    .await
    .unwrap();
    for (ch, _, notes) in clients.iter_mut().filter(|(ch, _, _)| *ch <= 1) {
        let got = tokio::time::timeout(Duration::from_secs(5), notes.recv()).await;
        let (channel, payload) = got.expect("a notification").unwrap();
        if *ch == 1 {
            assert_eq!(payload, "still");
        } else {
            assert_eq!((channel.as_str(), payload.as_str()), ("marker", "after"));
        }
    }
    drop(clients);
    drop(a);
    let gone = support::wait_for(Duration::from_secs(10), || {
        listening_backends(&cluster) == 0
    });
    assert!(
        gone,
        "the shared listening connection outlived its last listener"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_pins_in_pin_mode_and_notifications_arrive() {
    let cluster = Replicated::start();
    let pooler = cluster.pooler(
        &format!("default_pool_size = 3\nlisten_mode = \"pin\"\n{ADMIN}"),
        "",
    );
    let (a, mut rx) = listening_client(&pooler).await;
    a.batch_execute("LISTEN jobs").await.unwrap();
    let pinned = pooler.admin_column("SHOW CLIENTS", "pinned");
    assert!(pinned.contains(&"listen".to_owned()), "{pinned:?}");
    let b = connect(&pooler, "app", APP_PASSWORD).await;
    notified_after_transactions(&a, &mut rx, &b).await;
    // One that reaches its server while the pooler asks what the client's SET did (the
    // probe after each) is the client's all the same, in order.
    let sender = tokio::spawn(async move {
        for i in 0..200 {
            let notify = format!("NOTIFY jobs, 'n{i}'");
            b.batch_execute(&notify).await.unwrap();
        }
    });
    for i in 0..200 {
        let set = format!("SET application_name = 'probed {i}'");
        a.batch_execute(&set).await.unwrap();
    }
    sender.await.unwrap();
    for i in 0..200 {
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        let got = got.unwrap_or_else(|_| panic!("notification n{i} lost"));
        assert_eq!(got, Some(("jobs".to_owned(), format!("n{i}"))));
    }
    a.batch_execute("UNLISTEN *").await.unwrap();
    let unpinned = pooler.admin_column("SHOW CLIENTS", "pinned");
    assert!(unpinned.iter().all(|p| p.is_empty()), "{unpinned:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_session_features_off_refuses_them_with_0a000() {
    let cluster = Replicated::start();
    let pooler = cluster.pooler("pin_session_features = false\nlisten_mode = \"pin\"", "");
    let a = connect(&pooler, "app", APP_PASSWORD).await;
    for sql in [
        "SELECT pg_advisory_lock(1)",
        "CREATE TEMP TABLE t (x int)",
        "PREPARE p AS SELECT 1",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        "LISTEN ch",
        "LOAD 'plpgsql'",
    ] {
        let e = a.batch_execute(sql).await.unwrap_err();
        assert_eq!(sqlstate(&e), "0A000", "{sql}");
        let db = e.as_db_error().unwrap();
        assert!(db.message().contains("pin_session_features"), "{sql}: {db}");
        // pgsluice's refusal, not the trace of how the server was made to fail.
        assert_eq!(db.where_(), None, "{sql}: {db:?}");
    }
    // Inside a transaction the refusal fails it, as any error would.
    a.batch_execute("BEGIN").await.unwrap();
    let e = a
        .query("SELECT pg_advisory_lock($1)", &[&1i64])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
    let aborted = a.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&aborted), "25P02");
    a.batch_execute("ROLLBACK").await.unwrap();
    // What needs no pin still works.
    assert_eq!(one(&a, "SELECT pg_advisory_xact_lock(1)").await, "");
    a.batch_execute("BEGIN; CREATE TEMP TABLE t (x int) ON COMMIT DROP; COMMIT")
        .await
        .unwrap();
    assert_eq!(pins(&pooler, "advisory_lock"), 0.0);
}
