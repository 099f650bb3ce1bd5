//! Two pgsluice processes with the same configuration (but their ports) in front of one
//! database, clients spread over both as a TCP load balancer would: every result is right on
//! both, and each instance keeps to its own pool.

mod support;

use pgsluice::localpg::LocalPostgres;
use support::{primary, Process, APP_PASSWORD};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_serve_clients_side_by_side() {
    let pg = primary();
    pg.psql_in(
        "app",
        "CREATE TABLE ledger (client int, n int); ALTER TABLE ledger OWNER TO app",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let start = |name| Process::start(pg.port, dir.path(), name, "default_pool_size = 3");
    let instances = [start("one"), start("two")];
    let watch = support::ActivityWatch::start(&pg, "usename = 'app'");
    let mut tasks = Vec::new();
    for client in 0..8 {
        // Round robin over the instances, as a balancer would place connections.
        let port = instances[client % 2].port;
        tasks.push(tokio::spawn(async move {
            let conn =
                format!("host=127.0.0.1 port={port} user=app password='{APP_PASSWORD}' dbname=app");
            let (mut c, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            let client = client as i32;
            for n in 0..50i32 {
                let tx = c.transaction().await.unwrap();
                tx.execute("INSERT INTO ledger VALUES ($1, $2)", &[&client, &n])
                    .await
                    .unwrap();
                let row = tx
                    .query_one(
                        "SELECT count(*), coalesce(sum(n), 0) FROM ledger WHERE client = $1",
                        &[&client],
                    )
                    .await
                    .unwrap();
                // Within its transaction a client sees exactly its own writes so far.
                assert_eq!(row.get::<_, i64>(0), i64::from(n) + 1);
                assert_eq!(row.get::<_, i64>(1), i64::from(n * (n + 1) / 2));
                tx.commit().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let servers = watch.stop();
    assert_eq!(
        pg.psql_in("app", "SELECT count(*), count(DISTINCT client) FROM ledger")
            .unwrap(),
        "400|8"
    );
    assert!(
        servers <= 6,
        "each instance keeps to its pool of 3: {servers} server connections"
    );
}

/// Connects with `conn`, starts `SELECT pg_sleep(20)`, and once it runs on `pg` sends its
/// cancel request to `other` (another instance than the one serving it): the query must be
/// cancelled within a second.
async fn cancelled_through(pg: &LocalPostgres, conn: &str, other: (&str, u16)) {
    let (c, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let token = c.cancel_token();
    let query = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(20)").await });
    assert!(support::wait_for(
        std::time::Duration::from_secs(10),
        || { support::running(pg, "pg_sleep(20)") }
    ));
    let sent = std::time::Instant::now();
    let to_other = tokio::net::TcpStream::connect(other).await.unwrap();
    token
        .cancel_query_raw(to_other, tokio_postgres::NoTls)
        .await
        .unwrap();
    let r = tokio::time::timeout(std::time::Duration::from_secs(10), query)
        .await
        .expect("the query was not cancelled")
        .unwrap();
    assert_eq!(
        r.expect_err("cancelled").code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
    );
    assert!(
        sent.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
}

/// A cancel request that a balancer sends to the other instance is sent on to the one that
/// gave out the key (`peers`), and cancels the query within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_another_instance_reaches_its_query() {
    let pg = primary();
    let dir = tempfile::tempdir().unwrap();
    let free = pgsluice::localpg::free_port;
    let (one, two) = ((free(), free()), (free(), free()));
    let general = |id: u16, other: u16, port: u16| {
        format!("peer_id = {id}\npeers = {{ {other} = \"127.0.0.1:{port}\" }}")
    };
    let first = Process::start_on(pg.port, dir.path(), "one", &general(1, 2, two.0), one);
    let second = Process::start_on(pg.port, dir.path(), "two", &general(2, 1, one.0), two);
    let conn = first.conn_str();
    cancelled_through(&pg, &conn, ("127.0.0.1", second.port)).await;
}

/// `peers_dns`: two instances on one port at two addresses that one DNS name resolves to (as
/// a Kubernetes headless Service does), with the same configuration (peer_id 0 both, no
/// `peers`). A cancel request that reaches the other instance is sent to both addresses, and
/// the one whose client has the key cancels its query. The instances run in a network
/// namespace of the test's own, whose /etc/hosts gives the name its two addresses; the
/// database is outside, across a veth pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_its_query_through_the_instances_a_dns_name_finds() {
    use support::netns::Netns;
    let pg = primary();
    let net = Netns::create(2);
    pg.open_to(&net.host_ip, &format!("{}.0/29", net.net))
        .unwrap();
    let second_ip = format!("{}.3", net.net);
    net.add_address(&second_ip);
    let name = "peers.pgsluice.test";
    net.hosts(&format!(
        "127.0.0.1 localhost\n{} {name}\n{second_ip} {name}\n",
        net.ns_ip
    ));
    let port = pgsluice::localpg::free_port();
    let dir = tempfile::tempdir().unwrap();
    let start = |ip: &str| {
        let path = dir.path().join(format!("{ip}.toml"));
        std::fs::write(
            &path,
            format!(
                "listen_addr = \"{ip}\"\nlisten_port = {port}\nhttp_listen = \"\"\n\
                 peers_dns = \"{name}:{port}\"\n\
                 [databases.app]\nhost = \"{host}\"\nport = {pg_port}\n\
                 [users.app]\npassword = \"{APP_PASSWORD}\"\n",
                host = net.host_ip,
                pg_port = pg.port,
            ),
        )
        .unwrap();
        let program = std::path::Path::new(env!("CARGO_BIN_EXE_pgsluice"));
        let child = Process::spawn(net.command(program), &path);
        let listening = support::wait_for(std::time::Duration::from_secs(10), || {
            std::net::TcpStream::connect((ip, port)).is_ok()
        });
        assert!(listening, "an instance on {ip}:{port}");
        Process {
            child,
            port,
            http: 0,
        }
    };
    let _first = start(&net.ns_ip);
    let _second = start(&second_ip);
    let conn = format!(
        "host={} port={port} user=app password='{APP_PASSWORD}' dbname=app",
        net.ns_ip
    );
    cancelled_through(&pg, &conn, (&second_ip, port)).await;
}

/// With so_reuseport a second process takes over the port while the first drains after
/// SIGTERM: a connect-query-disconnect loop all along loses no connection attempt.
#[test]
fn a_new_process_takes_over_the_port_without_a_refused_connection() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let pg = primary();
    let dir = tempfile::tempdir().unwrap();
    let port = pgsluice::localpg::free_port();
    let free = pgsluice::localpg::free_port;
    let mut old = Process::start_on(
        pg.port,
        dir.path(),
        "old",
        "so_reuseport = true",
        (port, free()),
    );
    let dsn = old.conn_str();
    let (stop, ok, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(std::sync::Mutex::new(Vec::new())),
    );
    let looping = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            rt.block_on(async {
                while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                    let once = async {
                        let (c, conn) =
                            tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await?;
                        let conn = tokio::spawn(conn);
                        c.simple_query("SELECT 1").await?;
                        drop(c);
                        let _ = conn.await;
                        Ok::<_, tokio_postgres::Error>(())
                    };
                    match once.await {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            failed.lock().unwrap().push(format!("{e:?}"));
                            0
                        }
                    };
                }
            })
        })
    };
    let served = |n: usize| {
        let ok = ok.clone();
        move || ok.load(Ordering::Relaxed) >= n
    };
    assert!(support::wait_for(
        std::time::Duration::from_secs(20),
        served(50)
    ));
    let _new = Process::start_on(
        pg.port,
        dir.path(),
        "new",
        "so_reuseport = true",
        (port, free()),
    );
    old.signal("TERM");
    let status = old
        .exit(std::time::Duration::from_secs(30))
        .expect("the old one drains and exits");
    assert!(status.success());
    let after = ok.load(Ordering::Relaxed);
    assert!(support::wait_for(
        std::time::Duration::from_secs(20),
        served(after + 50)
    ));
    stop.store(true, Ordering::Relaxed);
    looping.join().unwrap();
    let failed = failed.lock().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        ok.load(Ordering::Relaxed),
        &failed[..failed.len().min(5)]
    );
}
