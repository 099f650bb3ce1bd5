//! The PostgreSQL v3 wire protocol, as far as a pooler needs it.
//!
//! Pure: no IO, no tokio. Every decoder takes a buffer and returns `Ok(None)` when more bytes are
//! needed, so the same code serves the sockets, the tests and the fuzz targets. Lengths are checked
//! before any arithmetic, because every byte here comes from an untrusted peer.

pub mod backend;
pub mod frontend;
pub mod parsed;
pub mod startup;

use thiserror::Error;

/// Why a peer's bytes could not be decoded. Each of these ends the connection with 08P01.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("invalid message length {0}")]
    BadLength(i64),
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error("invalid startup packet: {0}")]
    BadStartup(&'static str),
    #[error("unsupported frontend protocol {major}.{minor}")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid frontend message type {0}")]
    UnknownMessage(u8),
    #[error("malformed {0} message")]
    Malformed(&'static str),
}

/// SQLSTATE codes the pooler itself raises.
pub mod sqlstate {
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const CRASH_SHUTDOWN: &str = "57P02";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const SERIALIZATION_FAILURE: &str = "40001";
    pub const READ_ONLY_SQL_TRANSACTION: &str = "25006";
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    pub const SYNTAX_ERROR: &str = "42601";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const CONFIG_FILE_ERROR: &str = "F0000";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const QUERY_CANCELED: &str = "57014";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
}

/// Reads a NUL-terminated string from the front of `buf`, returning it and the rest.
pub(crate) fn take_cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = buf.iter().position(|&b| b == 0)?;
    Some((&buf[..end], &buf[end + 1..]))
}

/// "Fuzz lite" that runs with every `cargo test`: random and split byte streams into every
/// decoder. None may panic, and splitting a stream must not change what is decoded.
#[cfg(test)]
mod fuzz_lite {
    use super::{backend, frontend, startup};
    use bytes::BytesMut;
    use proptest::prelude::*;

    fn decode_frontend_stream(
        bytes: &[u8],
        cuts: &[usize],
    ) -> Vec<Result<u8, super::ProtocolError>> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
            let cut = cut.clamp(fed, bytes.len());
            buf.extend_from_slice(&bytes[fed..cut]);
            fed = cut;
            loop {
                match frontend::header(&buf, 1 << 16) {
                    Ok(Some(h)) if buf.len() >= h.len => {
                        let frame = buf.split_to(h.len);
                        out.push(frontend::parse(h.tag, &frame[5..]).map(|_| h.tag));
                    }
                    Ok(_) => break,
                    Err(e) => {
                        out.push(Err(e));
                        return out;
                    }
                }
            }
        }
        out
    }

    fn frontend_message() -> impl Strategy<Value = Vec<u8>> {
        let tags = prop::sample::select(b"QPBDCESHXdcfFpz".to_vec());
        (tags, prop::collection::vec(any::<u8>(), 0..40)).prop_map(|(tag, body)| {
            let mut m = vec![tag];
            m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
            m.extend_from_slice(&body);
            m
        })
    }

    proptest! {
        #[test]
        fn startup_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = startup::decode(&mut buf);
        }

        #[test]
        fn frontend_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_frontend_stream(&bytes, &[]);
        }

        #[test]
        fn frontend_split_streams_decode_alike(
            msgs in prop::collection::vec(frontend_message(), 1..12),
            cuts in prop::collection::vec(0usize..400, 0..8),
        ) {
            let stream: Vec<u8> = msgs.concat();
            let mut cuts = cuts;
            cuts.sort_unstable();
            prop_assert_eq!(decode_frontend_stream(&stream, &[]), decode_frontend_stream(&stream, &cuts));
        }

        #[test]
        fn backend_scanner_never_panics_and_splits_alike(
            bytes in prop::collection::vec(any::<u8>(), 0..600),
            cut in 0usize..600,
        ) {
            let scan_all = |parts: &[&[u8]]| {
                let mut s = backend::Scanner::default();
                let mut buf = Vec::new();
                let mut forwarded = Vec::new();
                for part in parts {
                    buf.extend_from_slice(part);
                    match s.scan(&buf, |_| backend::Action::Forward) {
                        Ok(r) => {
                            forwarded.extend(buf.drain(..r.forward));
                        }
                        Err(_) => return None,
                    }
                }
                Some(forwarded)
            };
            let cut = cut.min(bytes.len());
            let whole = scan_all(&[&bytes]);
            let split = scan_all(&[&bytes[..cut], &bytes[cut..]]);
            if let (Some(w), Some(s)) = (whole, split) {
                prop_assert_eq!(w, s);
            }
        }

        #[test]
        fn password_message_parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = frontend::sasl_initial_response(&bytes);
            let _ = frontend::password(&bytes);
        }
    }
}
