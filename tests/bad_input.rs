//! Hostile and broken clients get 08P01 or a clean close, never a hang, and never cost the
//! pooler a server connection or its service to everyone else.

mod support;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::{primary, stdout, Pooler};

/// Reads everything until the pooler closes the connection (a timeout fails the test).
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => out,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => out,
        Err(e) => panic!("pooler did not close the connection: {e}"),
    }
}

/// The SQLSTATE of the first ErrorResponse in `bytes`, if any.
fn error_code(bytes: &[u8]) -> Option<String> {
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let (frame, tail) = rest.split_at((len + 1).min(rest.len()));
        if frame[0] == b'E' {
            let body = &frame[5..];
            return pgsluice::protocol::backend::error_field(body, b'C')
                .map(|c| String::from_utf8_lossy(c).into_owned());
        }
        rest = tail;
    }
    None
}

fn assert_protocol_violation(mut s: TcpStream, what: &str) {
    let got = read_to_close(&mut s);
    assert_eq!(
        error_code(&got).as_deref(),
        Some("08P01"),
        "{what}: {got:?}"
    );
}

#[test]
fn bad_startup_packets() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "auth_type = \"trust\"");

    let mut s = support::raw_connect(&pooler);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_protocol_violation(s, "http request");

    let mut s = support::raw_connect(&pooler);
    s.write_all(&[0xff, 0xff, 0xff, 0xf0, 0, 3, 0, 0]).unwrap();
    assert_protocol_violation(s, "negative length");

    let mut s = support::raw_connect(&pooler);
    s.write_all(&[0, 0, 0x30, 0, 0, 3, 0, 0]).unwrap();
    assert_protocol_violation(s, "startup over 10000 bytes");

    let mut s = support::raw_connect(&pooler);
    s.write_all(&[0, 0, 0, 12, 0, 3, 0, 0, b'u', b's']).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let got = read_to_close(&mut s);
    assert!(
        got.is_empty(),
        "a truncated packet is closed without a reply: {got:?}"
    );

    let mut s = support::raw_connect(&pooler);
    s.write_all(&[0, 0, 0, 8, 0, 2, 0, 0]).unwrap();
    assert_protocol_violation(s, "protocol 2");

    let mut s = support::raw_connect(&pooler);
    s.write_all(&[0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f]).unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"N", "SSLRequest is refused with N");

    assert_eq!(stdout(&pooler.psql("SELECT 1")), "1");
}

#[test]
fn bad_messages_after_login() {
    let pg = primary();
    let pooler = Pooler::start(
        &pg,
        "auth_type = \"trust\"\ndefault_pool_size = 2\nmax_packet_size = 65536",
    );

    let mut s = support::logged_in_trust(&pooler);
    s.write_all(b"z\0\0\0\x04").unwrap();
    assert_protocol_violation(s, "unknown message type");

    let mut s = support::logged_in_trust(&pooler);
    s.write_all(b"Q\x7f\xff\xff\xff").unwrap();
    assert_protocol_violation(s, "length over max_packet_size");

    let mut s = support::logged_in_trust(&pooler);
    s.write_all(b"Q\xff\xff\xff\xfe").unwrap();
    assert_protocol_violation(s, "negative length");

    let mut s = support::logged_in_trust(&pooler);
    s.write_all(b"Q\0\0\0\x08abcd").unwrap();
    assert_protocol_violation(s, "Query without its terminator");

    let mut s = support::logged_in_trust(&pooler);
    s.write_all(b"p\0\0\0\x08abc\0").unwrap();
    assert_protocol_violation(s, "password message out of order");

    // A transaction opened, then half a message and a vanished client.
    let mut s = support::logged_in_trust(&pooler);
    let mut buf = BytesMut::new();
    frontend::query("BEGIN; CREATE TABLE half_done (x int)", &mut buf).unwrap();
    s.write_all(&buf).unwrap();
    support::read_until_ready(&mut s);
    s.write_all(b"Q\0\0\0\x40SELECT").unwrap();
    drop(s);

    // A bad message inside a transaction: the transaction is rolled back too.
    let mut s = support::logged_in_trust(&pooler);
    buf.clear();
    frontend::query("BEGIN; CREATE TABLE bad_in_tx (x int); SELECT 1", &mut buf).unwrap();
    buf.extend_from_slice(b"z\0\0\0\x04");
    s.write_all(&buf).unwrap();
    assert_protocol_violation(s, "bad message inside a transaction");

    // Everyone else is still served, and no transaction survived.
    assert_eq!(stdout(&pooler.psql("SELECT 1")), "1");
    let gone = support::wait_for(Duration::from_secs(10), || {
        pg.psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND state LIKE 'idle in transaction%'")
            .map(|n| n == "0")
            .unwrap_or(false)
    });
    assert!(gone, "a transaction was left open");
    assert_eq!(
        stdout(
            &pooler.psql(
                "SELECT count(*) FROM pg_tables WHERE tablename IN ('half_done', 'bad_in_tx')"
            )
        ),
        "0"
    );
}

#[test]
fn too_many_clients_get_53300() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "auth_type = \"trust\"\nmax_client_conn = 2");
    let _a = support::logged_in_trust(&pooler);
    let _b = support::logged_in_trust(&pooler);
    let mut c = support::raw_connect(&pooler);
    let got = read_to_close(&mut c);
    assert_eq!(error_code(&got).as_deref(), Some("53300"));
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("no more connections allowed (max_client_conn)"),
        "{text}"
    );
}
