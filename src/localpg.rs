//! Throwaway local PostgreSQL clusters from the system's binaries, a primary or a streaming
//! replica: `pgsluice demo` and every test that needs a real server use them. Each cluster
//! lives in its own temporary directory on its own free port and is stopped and removed when
//! dropped, also when a test panics. It imports nothing of pgsluice's, so that any module's
//! tests may use it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Folder with initdb, pg_ctl, pg_basebackup and friends: `pg_config --bindir`, else the
/// newest /usr/lib/postgresql/*/bin.
pub fn pg_bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root (initdb refuses root).
fn pg_tool(bindir: &Path, tool: &str, args: &[&str]) -> std::io::Result<Output> {
    pg_tool_in(None, bindir, tool, args)
}

/// `pg_tool` inside network namespace `netns`, if given (a test's own, made as root).
fn pg_tool_in(
    netns: Option<&str>,
    bindir: &Path,
    tool: &str,
    args: &[&str],
) -> std::io::Result<Output> {
    let exe = bindir.join(tool);
    // Making a namespace took root; initdb and friends refuse it.
    let as_postgres = netns.is_some() || is_root();
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "runuser"]);
            c
        }
        None if as_postgres => Command::new("runuser"),
        None => Command::new(&exe),
    };
    if as_postgres {
        cmd.args(["-u", "postgres", "--"]).arg(&exe);
    }
    let out = cmd.args(args).output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out)
}

fn chown_to_postgres(path: &Path) -> std::io::Result<()> {
    if !is_root() {
        return Ok(());
    }
    let out = Command::new("chown")
        .arg("-R")
        .arg("postgres:postgres")
        .arg(path)
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other("chown to postgres failed"));
    }
    Ok(())
}

/// Removes its directory when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        let name = format!(
            "pgsluice-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir)?;
        chown_to_postgres(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One running PostgreSQL server (primary or streaming replica).
pub struct LocalPostgres {
    pub port: u16,
    /// The address it listens on and is reached at: 127.0.0.1, but for a server in a network
    /// namespace of a test's own.
    pub host: String,
    /// The network namespace it runs in, if not the test's own.
    netns: Option<String>,
    bindir: PathBuf,
    data: PathBuf,
    /// Holds the data directory and the server's Unix socket.
    dir: TempDir,
}

const HBA: &str = "\
local all all trust
host all postgres 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
host all cleartext_user 127.0.0.1/32 password
host all all 127.0.0.1/32 md5
host all all ::1/128 md5
";

impl LocalPostgres {
    /// initdb and start a primary. Roles get passwords checked with SCRAM or md5, depending
    /// on how each password is stored; `postgres` is trusted from 127.0.0.1.
    pub fn start_primary() -> std::io::Result<LocalPostgres> {
        let bindir = pg_bindir();
        let dir = TempDir::new()?;
        let data = dir.0.join("data");
        let data_s = data.to_string_lossy().into_owned();
        pg_tool(
            &bindir,
            "initdb",
            &[
                "-D",
                &data_s,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        std::fs::write(data.join("pg_hba.conf"), HBA)?;
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nmax_connections = 300\n\
             fsync = off\nfull_page_writes = off\nwal_level = replica\n\
             max_wal_senders = 8\nhot_standby = on\nshared_buffers = 64MB\n",
            dir.0.display()
        );
        let mut existing = std::fs::read_to_string(data.join("postgresql.conf"))?;
        existing.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), existing)?;
        chown_to_postgres(&dir.0)?;
        let pg = LocalPostgres {
            port: free_port(),
            host: "127.0.0.1".into(),
            netns: None,
            bindir,
            data,
            dir,
        };
        pg.start()?;
        Ok(pg)
    }

    /// Also listens on `addr` (after a restart), and takes logins and replication from
    /// `cidr`: for a replica in a network namespace of a test's own (`start_replica_in`).
    pub fn open_to(&self, addr: &str, cidr: &str) -> std::io::Result<()> {
        let mut hba = std::fs::read_to_string(self.data.join("pg_hba.conf"))?;
        hba.push_str(&format!(
            "host all postgres {cidr} trust\nhost replication all {cidr} trust\n\
             host all all {cidr} md5\n"
        ));
        std::fs::write(self.data.join("pg_hba.conf"), hba)?;
        let mut conf = std::fs::read_to_string(self.data.join("postgresql.conf"))?;
        conf.push_str(&format!("listen_addresses = '127.0.0.1,{addr}'\n"));
        std::fs::write(self.data.join("postgresql.conf"), conf)?;
        self.stop(false)?;
        self.start()
    }

    /// A streaming replica of `primary`, from pg_basebackup -R -X stream -c fast.
    pub fn start_replica(primary: &LocalPostgres) -> std::io::Result<LocalPostgres> {
        LocalPostgres::replica(primary, None, "127.0.0.1")
    }

    /// A streaming replica of `primary` that runs in network namespace `netns`, listens on
    /// `host` there, and streams from the primary at `primary_host` (see `open_to`).
    pub fn start_replica_in(
        primary: &LocalPostgres,
        netns: &str,
        host: &str,
        primary_host: &str,
    ) -> std::io::Result<LocalPostgres> {
        LocalPostgres::replica(primary, Some((netns, primary_host)), host)
    }

    fn replica(
        primary: &LocalPostgres,
        netns: Option<(&str, &str)>,
        host: &str,
    ) -> std::io::Result<LocalPostgres> {
        let dir = TempDir::new()?;
        let data = dir.0.join("data");
        let data_s = data.to_string_lossy().into_owned();
        let port = primary.port.to_string();
        pg_tool(
            &primary.bindir,
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                &data_s,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ],
        )?;
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf"))?;
        conf.push_str(&format!(
            "unix_socket_directories = '{}'\nlisten_addresses = '{host}'\n",
            dir.0.display()
        ));
        std::fs::write(data.join("postgresql.conf"), conf)?;
        if let Some((_, primary_host)) = netns {
            // After the primary_conninfo of -R, so that this one counts.
            let mut auto = std::fs::read_to_string(data.join("postgresql.auto.conf"))?;
            auto.push_str(&format!(
                "primary_conninfo = 'host={primary_host} port={port} user=postgres'\n"
            ));
            std::fs::write(data.join("postgresql.auto.conf"), auto)?;
        }
        chown_to_postgres(&dir.0)?;
        let pg = LocalPostgres {
            port: free_port(),
            host: host.into(),
            netns: netns.map(|(ns, _)| ns.to_owned()),
            bindir: primary.bindir.clone(),
            data,
            dir,
        };
        pg.start()?;
        Ok(pg)
    }

    pub fn start(&self) -> std::io::Result<()> {
        let data = self.data.to_string_lossy().into_owned();
        let log = self.data.join("server.log").to_string_lossy().into_owned();
        let opts = format!("-p {}", self.port);
        pg_tool_in(
            self.netns.as_deref(),
            &self.bindir,
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-o", &opts, "-w", "-t", "60", "start",
            ],
        )?;
        Ok(())
    }

    /// Stops the server; `immediate` simulates a crash.
    pub fn stop(&self, immediate: bool) -> std::io::Result<()> {
        let data = self.data.to_string_lossy().into_owned();
        let mode = if immediate { "immediate" } else { "fast" };
        pg_tool(
            &self.bindir,
            "pg_ctl",
            &["-D", &data, "-m", mode, "-w", "stop"],
        )?;
        Ok(())
    }

    /// Promotes a replica to primary, waiting until it accepts writes.
    pub fn promote(&self) -> std::io::Result<()> {
        let data = self.data.to_string_lossy().into_owned();
        pg_tool(&self.bindir, "pg_ctl", &["-D", &data, "-w", "promote"])?;
        Ok(())
    }

    /// The directory of the server's Unix socket (`.s.PGSQL.PORT`).
    pub fn socket_dir(&self) -> &Path {
        &self.dir.0
    }

    /// Runs SQL as the superuser in database `postgres` and returns psql's unaligned output.
    pub fn psql(&self, sql: &str) -> std::io::Result<String> {
        self.psql_in("postgres", sql)
    }

    /// Runs SQL as the superuser in database `db`.
    pub fn psql_in(&self, db: &str, sql: &str) -> std::io::Result<String> {
        let out = Command::new(self.bindir.join("psql"))
            .args([
                "-X",
                "-h",
                &self.host,
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-Atq", "-c", sql])
            .output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        let _ = self.stop(true);
    }
}
