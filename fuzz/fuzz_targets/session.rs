#![no_main]
//! A whole client session against an in-process pooler with a real PostgreSQL behind it: a
//! login, then arbitrary frontend messages, then a vanishing client; after each, a second
//! client on the same one-server pool must get a server with nothing left of the first.
//!
//! The PostgreSQL server is the caller's: `PGSLUICE_FUZZ_PORT` names a primary on 127.0.0.1
//! with role `fuzz` (password `fuzz`, no special rights) owning database `fuzz`; tests/fuzz.rs
//! sets one up. RUST_LOG=debug shows the pooler's log.
use libfuzzer_sys::fuzz_target;
use pgsluice::config::Config;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The tags a client may send after its login; an input byte picks one.
const TAGS: &[u8] = b"QPBEDSHCFdcfX";
/// What the probe client must see on the server it gets after each session.
const CLEAN: &str = "fuzz|\"$user\", public|0|probe|true|0|0|0|0|0";
const PROBE: &str = "SELECT current_user || '|' || current_setting('search_path') || '|' \
    || current_setting('statement_timeout') || '|' || current_setting('application_name') \
    || '|' || (now() = statement_timestamp()) \
    || '|' || (SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory') \
    || '|' || (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()) \
    || '|' || (SELECT count(*) FROM pg_listening_channels()) \
    || '|' || (SELECT count(*) FROM pg_prepared_statements WHERE from_sql) \
    || '|' || (SELECT count(*) FROM pg_cursors WHERE is_holdable)";

struct Harness {
    pooler: SocketAddr,
    probe: Mutex<Option<TcpStream>>,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let port: u16 = std::env::var("PGSLUICE_FUZZ_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .expect("PGSLUICE_FUZZ_PORT: the port of a PostgreSQL primary (see tests/fuzz.rs)");
        let text = format!(
            "listen_addr = \"127.0.0.1\"\nlisten_port = 0\nhttp_listen = \"\"\n\
             auth_type = \"trust\"\ndefault_pool_size = 1\nquery_wait_timeout = 10\n\
             query_timeout = 3\nclient_login_timeout = 5\n\
             [databases.fuzz]\nport = {port}\n[users.fuzz]\npassword = \"fuzz\"\n"
        );
        let config = Config::parse(&text, "fuzz.toml").expect("fuzz config");
        // The pooler's log, to see what an input did: RUST_LOG=debug.
        if std::env::var_os("RUST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_writer(std::io::stderr)
                .init();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let service = pgsluice::service::Service::bind(config)
                    .await
                    .expect("bind");
                tx.send(service.local_addr()).expect("report address");
                service.serve().await;
            });
        });
        let pooler = rx.recv().expect("pooler listening");
        Harness {
            pooler,
            probe: Mutex::new(None),
        }
    })
}

/// A logged-in client; the login itself must work every time.
fn login(addr: SocketAddr, application_name: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect to the pooler");
    s.set_nodelay(true).ok();
    s.set_read_timeout(Some(Duration::from_secs(15))).ok();
    let mut body = Vec::new();
    body.extend_from_slice(&196608u32.to_be_bytes());
    for (k, v) in [
        ("user", "fuzz"),
        ("database", "fuzz"),
        ("application_name", application_name),
    ] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    s.write_all(&msg).expect("send startup");
    loop {
        let (tag, payload) = read_message(&mut s).expect("login answered");
        match tag {
            b'Z' => return s,
            b'E' => panic!("login refused: {}", String::from_utf8_lossy(&payload)),
            _ => {}
        }
    }
}

fn read_message(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len < 4 {
        return Err(std::io::Error::new(ErrorKind::InvalidData, "bad length"));
    }
    let mut payload = vec![0; len - 4];
    s.read_exact(&mut payload)?;
    Ok((head[0], payload))
}

fn frame(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((payload.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(payload);
    m
}

/// Runs the probe query on the probe client: its one text value, or why it failed.
fn probe(s: &mut TcpStream) -> Result<String, String> {
    let mut q = PROBE.as_bytes().to_vec();
    q.push(0);
    s.write_all(&frame(b'Q', &q)).map_err(|e| e.to_string())?;
    let mut value = None;
    loop {
        let (tag, payload) = read_message(s).map_err(|e| e.to_string())?;
        match tag {
            b'D' if payload.len() >= 6 => {
                value = Some(String::from_utf8_lossy(&payload[6..]).into_owned());
            }
            b'E' => return Err(String::from_utf8_lossy(&payload).into_owned()),
            b'Z' => return value.ok_or_else(|| "no row".into()),
            _ => {}
        }
    }
}

/// Sends the input as a client would, then vanishes. The first byte says whether it reads
/// the answers before it goes; the rest is messages: a tag byte (a high one sends raw bytes
/// instead), a length byte, and that many payload bytes.
fn session(addr: SocketAddr, data: &[u8]) {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let mut s = login(addr, "fuzz");
    let mut out = Vec::new();
    let mut syncs = 0;
    while let [sel, len, tail @ ..] = rest {
        let len = (*len as usize).min(tail.len());
        let (payload, after) = tail.split_at(len);
        rest = after;
        if *sel >= 0xf0 {
            out.extend_from_slice(payload);
            continue;
        }
        let tag = TAGS[*sel as usize % TAGS.len()];
        syncs += usize::from(tag == b'Q' || tag == b'S');
        out.extend_from_slice(&frame(tag, payload));
    }
    if s.write_all(&out).is_err() || flags & 1 == 0 {
        return;
    }
    // Read what comes back until every Query and Sync is answered, the pooler closes, or a
    // deadline: some inputs legitimately wait (COPY FROM STDIN expects its data).
    let deadline = Instant::now() + Duration::from_secs(1);
    s.set_read_timeout(Some(Duration::from_millis(200))).ok();
    while syncs > 0 && Instant::now() < deadline {
        match read_message(&mut s) {
            Ok((b'Z', _)) => syncs -= 1,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {}
            Err(_) => return,
        }
    }
    if flags & 2 != 0 {
        let _ = s.write_all(&frame(b'X', &[]));
    }
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    session(h.pooler, data);
    // The one server of the pool must come back to the probe clean: no transaction, lock,
    // setting, temp table, LISTEN, SQL prepared statement or held cursor of the fuzzed
    // client's. A probe that waits past query_wait_timeout means a server was never given back.
    let mut slot = h.probe.lock().unwrap();
    let s = slot.get_or_insert_with(|| login(h.pooler, "probe"));
    match probe(s) {
        Ok(v) if v == CLEAN => {}
        Ok(v) => panic!("the next client saw the last one's state: {v} (clean: {CLEAN})"),
        Err(e) => panic!("the probe client failed after a session: {e}"),
    }
});
