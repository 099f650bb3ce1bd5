//! `pgsluice demo`: a throwaway primary and streaming replica (`localpg`) with pgsluice in
//! front, until Ctrl-C.

use crate::localpg::{free_port, pg_bindir, LocalPostgres};
use std::net::TcpListener;

/// `pgsluice demo`: a primary and a replica, a role and database to try, and the pooler in
/// front on 127.0.0.1:6432 (or a free port), until Ctrl-C.
pub async fn run() -> Result<(), Box<dyn std::error::Error>> {
    eprintln!(
        "starting a throwaway primary and replica from {} ...",
        pg_bindir().display()
    );
    let primary = LocalPostgres::start_primary()?;
    primary.psql("CREATE ROLE demo LOGIN PASSWORD 'demo'")?;
    primary.psql("CREATE DATABASE demo OWNER demo")?;
    let replica = LocalPostgres::start_replica(&primary)?;
    let free_or = |p: u16| {
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            p
        } else {
            free_port()
        }
    };
    let port = free_or(6432);
    let http = free_or(9930);
    let text = format!(
        "listen_port = {port}\nhttp_listen = \"127.0.0.1:{http}\"\nauth_type = \"scram-sha-256\"\ndefault_pool_size = 10\nadmin_users = [\"demo\"]\n\
         [databases.demo]\nhost = \"127.0.0.1\"\nport = {}\nreplicas = [\"127.0.0.1:{}\"]\n\
         [users.demo]\npassword = \"demo\"\n",
        primary.port, replica.port
    );
    let config = crate::config::Config::parse(&text, "demo")?;
    let service = crate::service::Service::bind(config).await?;
    println!("pgsluice demo is running.");
    println!(
        "  primary:  127.0.0.1:{} (replica streaming on 127.0.0.1:{})",
        primary.port, replica.port
    );
    println!("  connect:  psql \"host=127.0.0.1 port={port} user=demo password=demo dbname=demo\"");
    println!("  pgbench:  PGPASSWORD=demo pgbench -h 127.0.0.1 -p {port} -U demo -i demo");
    println!(
        "  routing:  SELECT inet_server_port();  runs on the replica ({}), writes and \
         transactions on the primary ({})",
        replica.port, primary.port
    );
    println!("  admin:    psql \"host=127.0.0.1 port={port} user=demo password=demo dbname=pgsluice\" -c \"SHOW POOLS\"");
    println!("  metrics:  curl http://127.0.0.1:{http}/metrics  (also /health and /ready)");
    println!("Press Ctrl-C to stop and remove everything.");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = service.serve() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("stopping ...");
    drop(replica);
    drop(primary);
    Ok(())
}
