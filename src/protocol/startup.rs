//! The first packet of a connection: StartupMessage, SSLRequest, GSSENCRequest or CancelRequest.
//! These have no type byte, only a length and a request code.

use super::{take_cstr, ProtocolError};
use bytes::{Buf, BytesMut};

/// PostgreSQL's own limit for a startup packet; longer ones are refused before they are buffered.
pub const MAX_STARTUP_PACKET: usize = 10_000;

const SSL_REQUEST: u32 = 80_877_103;
/// An SSLRequest as the pooler sends it to a server: length 8, then the request code.
pub const SSL_REQUEST_PACKET: [u8; 8] = {
    let c = SSL_REQUEST.to_be_bytes();
    [0, 0, 0, 8, c[0], c[1], c[2], c[3]]
};
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
/// pgsluice's own: a CancelRequest one instance sends on to the others it found by
/// `peers_dns` (request code 1234.5778). Only the instance whose client has the key acts on
/// it, and none sends it on again.
const PEER_CANCEL_REQUEST: u32 = 80_877_202;

#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    Ssl,
    GssEnc,
    /// `from_peer`: sent on by another instance (never to be sent on again).
    Cancel {
        process_id: i32,
        secret_key: i32,
        from_peer: bool,
    },
    Startup(Startup),
}

/// A CancelRequest for the key (`process_id`, `secret_key`): as PostgreSQL takes it, or as
/// one instance sends it on to its peers.
pub fn cancel_request(process_id: i32, secret_key: i32, from_peer: bool) -> [u8; 16] {
    let code = if from_peer {
        PEER_CANCEL_REQUEST
    } else {
        CANCEL_REQUEST
    };
    let mut packet = [0u8; 16];
    packet[..4].copy_from_slice(&16u32.to_be_bytes());
    packet[4..8].copy_from_slice(&code.to_be_bytes());
    packet[8..12].copy_from_slice(&process_id.to_be_bytes());
    packet[12..].copy_from_slice(&secret_key.to_be_bytes());
    packet
}

/// A StartupMessage: protocol 3.x plus its parameters, in the order sent.
#[derive(Debug, PartialEq, Eq, Default, Clone)]
pub struct Startup {
    pub minor: u16,
    pub params: Vec<(String, String)>,
}

impl Startup {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Decodes one startup packet from the front of `buf`; `Ok(None)` when more bytes are needed.
pub fn decode(buf: &mut BytesMut) -> Result<Option<StartupPacket>, ProtocolError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 {
        return Err(ProtocolError::BadLength(len.into()));
    }
    let len = len as usize;
    if len > MAX_STARTUP_PACKET {
        return Err(ProtocolError::TooLong {
            len,
            max: MAX_STARTUP_PACKET,
        });
    }
    if buf.len() < len {
        return Ok(None);
    }
    let mut packet = buf.split_to(len);
    packet.advance(4);
    let code = packet.get_u32();
    let body = &packet[..];
    match code {
        SSL_REQUEST if body.is_empty() => Ok(Some(StartupPacket::Ssl)),
        GSSENC_REQUEST if body.is_empty() => Ok(Some(StartupPacket::GssEnc)),
        CANCEL_REQUEST | PEER_CANCEL_REQUEST if body.len() == 8 => {
            let process_id = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            let secret_key = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
            Ok(Some(StartupPacket::Cancel {
                process_id,
                secret_key,
                from_peer: code == PEER_CANCEL_REQUEST,
            }))
        }
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST | PEER_CANCEL_REQUEST => {
            Err(ProtocolError::BadStartup("wrong length for a request code"))
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(ProtocolError::UnsupportedProtocol { major, minor });
            }
            Ok(Some(StartupPacket::Startup(parse_params(minor, body)?)))
        }
    }
}

fn parse_params(minor: u16, mut body: &[u8]) -> Result<Startup, ProtocolError> {
    let mut params = Vec::new();
    loop {
        let (key, rest) = take_cstr(body).ok_or(ProtocolError::BadStartup("unterminated key"))?;
        if key.is_empty() {
            if !rest.is_empty() {
                return Err(ProtocolError::BadStartup("bytes after the terminator"));
            }
            break;
        }
        let (value, rest) =
            take_cstr(rest).ok_or(ProtocolError::BadStartup("unterminated value"))?;
        let key =
            std::str::from_utf8(key).map_err(|_| ProtocolError::BadStartup("key not UTF-8"))?;
        let value =
            std::str::from_utf8(value).map_err(|_| ProtocolError::BadStartup("value not UTF-8"))?;
        params.push((key.to_owned(), value.to_owned()));
        body = rest;
    }
    Ok(Startup { minor, params })
}

/// Splits a startup `options` value (`-c a=b --c=d`) into settings, honouring backslash escapes
/// as PostgreSQL does. Anything that is not a setting is an error: it could change the session
/// behind the pooler's back.
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_ascii_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next()
                .ok_or_else(|| "option -c needs a value".to_owned())?
        } else if let Some(s) = w.strip_prefix("-c").or_else(|| w.strip_prefix("--")) {
            s.to_owned()
        } else {
            return Err(format!("unsupported startup option \"{w}\""));
        };
        let (k, v) = setting
            .split_once('=')
            .ok_or_else(|| format!("startup option \"{setting}\" has no value"))?;
        out.push((k.replace('-', "_"), v.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn packet(code: u32, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_i32(8 + body.len() as i32);
        b.put_u32(code);
        b.put_slice(body);
        b
    }

    #[test]
    fn decodes_startup_parameters() {
        let mut b = packet(196_608, b"user\0alice\0database\0app\0\0");
        let p = decode(&mut b).unwrap().unwrap();
        let StartupPacket::Startup(s) = p else {
            panic!("{p:?}")
        };
        assert_eq!(s.get("user"), Some("alice"));
        assert_eq!(s.get("database"), Some("app"));
        assert!(b.is_empty());
    }

    #[test]
    fn waits_for_whole_packet() {
        let full = packet(196_608, b"user\0a\0\0");
        let mut b = BytesMut::from(&full[..full.len() - 1]);
        assert_eq!(decode(&mut b), Ok(None));
    }

    #[test]
    fn refuses_oversized_and_negative_lengths() {
        let mut b = BytesMut::from(&[0x7f, 0, 0, 0, 0, 0, 0, 0][..]);
        assert!(matches!(decode(&mut b), Err(ProtocolError::TooLong { .. })));
        let mut b = BytesMut::from(&[0xff, 0xff, 0xff, 0xf0, 0, 0, 0, 0][..]);
        assert!(matches!(decode(&mut b), Err(ProtocolError::BadLength(_))));
    }

    #[test]
    fn decodes_requests() {
        assert_eq!(
            decode(&mut packet(SSL_REQUEST, b"")),
            Ok(Some(StartupPacket::Ssl))
        );
        assert_eq!(
            decode(&mut BytesMut::from(&SSL_REQUEST_PACKET[..])),
            Ok(Some(StartupPacket::Ssl))
        );
        assert_eq!(
            decode(&mut packet(GSSENC_REQUEST, b"")),
            Ok(Some(StartupPacket::GssEnc))
        );
        let c = decode(&mut packet(CANCEL_REQUEST, &[0, 0, 0, 7, 0, 0, 0, 9])).unwrap();
        assert_eq!(
            c,
            Some(StartupPacket::Cancel {
                process_id: 7,
                secret_key: 9,
                from_peer: false,
            })
        );
        for from_peer in [false, true] {
            let sent = cancel_request(-7, 9, from_peer);
            assert_eq!(
                decode(&mut BytesMut::from(&sent[..])).unwrap(),
                Some(StartupPacket::Cancel {
                    process_id: -7,
                    secret_key: 9,
                    from_peer,
                })
            );
        }
    }

    #[test]
    fn rejects_protocol_2() {
        let r = decode(&mut packet(2 << 16, b"\0"));
        assert!(matches!(
            r,
            Err(ProtocolError::UnsupportedProtocol { major: 2, .. })
        ));
    }

    #[test]
    fn parses_options() {
        let o = parse_options(r"-c search_path=a\ b --statement-timeout=5s -c x=1").unwrap();
        assert_eq!(
            o,
            vec![
                ("search_path".into(), "a b".into()),
                ("statement_timeout".into(), "5s".into()),
                ("x".into(), "1".into())
            ]
        );
        assert!(parse_options("-X").is_err());
    }
}
