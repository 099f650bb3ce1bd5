//! Pooler → client messages we build ourselves, and a streaming scanner over the server's replies.
//!
//! The scanner lets the pooler forward a server's bytes as they arrive, DataRow floods included,
//! while it still sees the few messages that change a session's state (ReadyForQuery,
//! ParameterStatus, CopyInResponse, ErrorResponse). Only those are held back until complete;
//! the reply to a query of the pooler's own is inspected whole (`Scanner::inspect_all`).

use super::{take_cstr, ProtocolError};
use bytes::{BufMut, BytesMut};

/// Transaction status of a ReadyForQuery message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    Idle,
    InTransaction,
    Failed,
}

impl TxStatus {
    pub fn from_byte(b: u8) -> Option<TxStatus> {
        match b {
            b'I' => Some(TxStatus::Idle),
            b'T' => Some(TxStatus::InTransaction),
            b'E' => Some(TxStatus::Failed),
            _ => None,
        }
    }

    pub fn byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }
}

/// A server message the session must act on.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    ReadyForQuery(TxStatus),
    ParameterStatus {
        name: &'a [u8],
        value: &'a [u8],
    },
    CopyIn,
    Error {
        code: &'a [u8],
        message: &'a [u8],
        /// The server function that raised it: says what happened whatever the locale.
        routine: &'a [u8],
    },
    ParseComplete,
    CloseComplete,
    /// CommandComplete with its tag, e.g. `SELECT 1` or `DISCARD ALL`.
    CommandComplete(&'a [u8]),
    /// Any other message, seen only while the scanner inspects everything (the reply to a
    /// query of the pooler's own).
    Other {
        tag: u8,
        body: &'a [u8],
    },
}

/// What to do with an inspected message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Forward,
    /// The reply to something the pooler sent on its own: the client must not see it.
    Drop,
    /// Forward these bytes instead of the message.
    Replace(&'static [u8]),
}

/// How far a scan got: `forward` bytes may go to the client as they are; then, if `edit` is
/// set, a message of that many bytes is to be dropped or replaced before scanning on.
#[derive(Debug, PartialEq, Eq)]
pub struct Scanned {
    pub forward: usize,
    pub edit: Option<(usize, Action)>,
}

/// ParseComplete, as the pooler sends it in place of a reply it produced itself.
pub const PARSE_COMPLETE: &[u8] = b"1\0\0\0\x04";

/// CloseComplete, for a Close the pooler answers itself.
pub const CLOSE_COMPLETE: &[u8] = b"3\0\0\0\x04";

/// ReadyForQuery, by status, for a reply the pooler stops a scan at.
pub fn ready_for_query_bytes(status: TxStatus) -> &'static [u8] {
    match status {
        TxStatus::Idle => b"Z\0\0\0\x05I",
        TxStatus::InTransaction => b"Z\0\0\0\x05T",
        TxStatus::Failed => b"Z\0\0\0\x05E",
    }
}

/// Finds frame boundaries in the server → client byte stream across reads.
#[derive(Debug, Default)]
pub struct Scanner {
    /// Bytes of an uninspected frame that have not been seen yet.
    remaining: usize,
    /// Every message is inspected, as an event: set while the reply to a query of the
    /// pooler's own is next, whose every message the client must not see.
    pub inspect_all: bool,
}

fn inspected(tag: u8) -> bool {
    matches!(tag, b'Z' | b'S' | b'G' | b'W' | b'E' | b'1' | b'3' | b'C')
}

impl Scanner {
    /// Scans `buf` from its start. Stops at a partial inspected message (left for the next
    /// call) or after the first message `on_event` does not forward. `on_event` sees each
    /// inspected message once.
    pub fn scan<'a>(
        &mut self,
        buf: &'a [u8],
        mut on_event: impl FnMut(Event<'a>) -> Action,
    ) -> Result<Scanned, ProtocolError> {
        let mut pos = 0;
        loop {
            if self.remaining > 0 {
                let n = self.remaining.min(buf.len() - pos);
                self.remaining -= n;
                pos += n;
                if self.remaining > 0 {
                    return Ok(Scanned {
                        forward: pos,
                        edit: None,
                    });
                }
            }
            let rest = &buf[pos..];
            if rest.len() < 5 {
                return Ok(Scanned {
                    forward: pos,
                    edit: None,
                });
            }
            let tag = rest[0];
            let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
            if len < 4 {
                return Err(ProtocolError::BadLength(len.into()));
            }
            let total = len as usize + 1;
            if !self.inspect_all && !inspected(tag) {
                self.remaining = total;
                continue;
            }
            if rest.len() < total {
                return Ok(Scanned {
                    forward: pos,
                    edit: None,
                });
            }
            match on_event(inspect(tag, &rest[5..total])?) {
                Action::Forward => pos += total,
                edit => {
                    return Ok(Scanned {
                        forward: pos,
                        edit: Some((total, edit)),
                    })
                }
            }
        }
    }
}

fn inspect(tag: u8, body: &[u8]) -> Result<Event<'_>, ProtocolError> {
    match tag {
        b'Z' => match body {
            [b] => TxStatus::from_byte(*b)
                .map(Event::ReadyForQuery)
                .ok_or(ProtocolError::Malformed("ReadyForQuery")),
            _ => Err(ProtocolError::Malformed("ReadyForQuery")),
        },
        b'S' => {
            let (name, rest) =
                take_cstr(body).ok_or(ProtocolError::Malformed("ParameterStatus"))?;
            let (value, _) = take_cstr(rest).ok_or(ProtocolError::Malformed("ParameterStatus"))?;
            Ok(Event::ParameterStatus { name, value })
        }
        b'G' | b'W' => Ok(Event::CopyIn),
        b'1' => Ok(Event::ParseComplete),
        b'3' => Ok(Event::CloseComplete),
        b'C' => Ok(Event::CommandComplete(
            take_cstr(body).map_or(body, |(tag, _)| tag),
        )),
        b'E' => Ok(Event::Error {
            code: error_field(body, b'C').unwrap_or(b""),
            message: error_field(body, b'M').unwrap_or(b""),
            routine: error_field(body, b'R').unwrap_or(b""),
        }),
        tag => Ok(Event::Other { tag, body }),
    }
}

/// One field of an ErrorResponse or NoticeResponse body.
pub fn error_field(mut body: &[u8], field: u8) -> Option<&[u8]> {
    while let Some((&f, rest)) = body.split_first() {
        if f == 0 {
            return None;
        }
        let (value, rest) = take_cstr(rest)?;
        if f == field {
            return Some(value);
        }
        body = rest;
    }
    None
}

fn frame(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    body(buf);
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    buf.put_slice(s);
    buf.put_u8(0);
}

/// ErrorResponse (or NoticeResponse with `tag` b'N') with severity, SQLSTATE and message.
pub fn error_response(buf: &mut BytesMut, severity: &str, code: &str, message: &str) {
    notice_or_error(buf, b'E', severity, code, message);
}

pub fn notice_or_error(buf: &mut BytesMut, tag: u8, severity: &str, code: &str, message: &str) {
    frame(buf, tag, |b| {
        for (f, v) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', code),
            (b'M', message),
        ] {
            b.put_u8(f);
            put_cstr(b, v.as_bytes());
        }
        b.put_u8(0);
    });
}

pub fn authentication_ok(buf: &mut BytesMut) {
    frame(buf, b'R', |b| b.put_i32(0));
}

pub fn authentication_cleartext(buf: &mut BytesMut) {
    frame(buf, b'R', |b| b.put_i32(3));
}

pub fn authentication_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    frame(buf, b'R', |b| {
        b.put_i32(5);
        b.put_slice(&salt);
    });
}

pub fn authentication_sasl(buf: &mut BytesMut, mechanism: &str) {
    frame(buf, b'R', |b| {
        b.put_i32(10);
        put_cstr(b, mechanism.as_bytes());
        b.put_u8(0);
    });
}

pub fn authentication_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    frame(buf, b'R', |b| {
        b.put_i32(11);
        b.put_slice(data);
    });
}

pub fn authentication_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    frame(buf, b'R', |b| {
        b.put_i32(12);
        b.put_slice(data);
    });
}

pub fn parameter_status(buf: &mut BytesMut, name: &[u8], value: &[u8]) {
    frame(buf, b'S', |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

pub fn backend_key_data(buf: &mut BytesMut, process_id: i32, secret_key: i32) {
    frame(buf, b'K', |b| {
        b.put_i32(process_id);
        b.put_i32(secret_key);
    });
}

pub fn ready_for_query(buf: &mut BytesMut, status: TxStatus) {
    frame(buf, b'Z', |b| b.put_u8(status.byte()));
}

pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    frame(buf, b'C', |b| put_cstr(b, tag.as_bytes()));
}

/// RowDescription of text columns (type text, no table).
pub fn row_description(buf: &mut BytesMut, columns: &[&str]) {
    frame(buf, b'T', |b| {
        b.put_i16(columns.len() as i16);
        for c in columns {
            put_cstr(b, c.as_bytes());
            b.put_i32(0); // table oid
            b.put_i16(0); // column number
            b.put_i32(25); // text
            b.put_i16(-1); // variable length
            b.put_i32(-1); // no type modifier
            b.put_i16(0); // text format
        }
    });
}

/// DataRow of text values; None is NULL.
pub fn data_row(buf: &mut BytesMut, values: &[Option<&str>]) {
    frame(buf, b'D', |b| {
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
    });
}

/// NegotiateProtocolVersion: the newest minor version we speak and the options we ignored.
pub fn negotiate_protocol_version(buf: &mut BytesMut, minor: i32, unsupported: &[&str]) {
    frame(buf, b'v', |b| {
        b.put_i32(3 << 16 | minor);
        b.put_i32(unsupported.len() as i32);
        for o in unsupported {
            put_cstr(b, o.as_bytes());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(scanner: &mut Scanner, buf: &[u8]) -> (usize, Vec<String>) {
        let mut seen = Vec::new();
        let s = scanner
            .scan(buf, |e| {
                seen.push(format!("{e:?}"));
                Action::Forward
            })
            .unwrap();
        assert_eq!(s.edit, None);
        (s.forward, seen)
    }

    #[test]
    fn forwards_data_rows_before_they_are_complete() {
        let mut s = Scanner::default();
        let mut b = BytesMut::new();
        frame(&mut b, b'D', |b| b.put_slice(&[7; 100]));
        ready_for_query(&mut b, TxStatus::Idle);
        let (n, ev) = events(&mut s, &b[..50]);
        assert_eq!((n, ev.len()), (50, 0));
        let (n, ev) = events(&mut s, &b[50..b.len() - 1]);
        assert_eq!((n, ev.len()), (55, 0), "partial ReadyForQuery is held back");
        let (n, ev) = events(&mut s, &b[105..]);
        assert_eq!(n, 6);
        assert_eq!(ev, vec!["ReadyForQuery(Idle)".to_owned()]);
    }

    #[test]
    fn sees_error_code_and_parameter_status() {
        let mut b = BytesMut::new();
        error_response(&mut b, "ERROR", "42P01", "no table");
        parameter_status(&mut b, b"TimeZone", b"UTC");
        let mut s = Scanner::default();
        let mut seen = Vec::new();
        let n = s
            .scan(&b, |e| {
                match e {
                    Event::Error { code, .. } => seen.push(code.to_vec()),
                    Event::ParameterStatus { name, value } => seen.push([name, value].concat()),
                    _ => {}
                }
                Action::Forward
            })
            .unwrap();
        assert_eq!(
            n,
            Scanned {
                forward: b.len(),
                edit: None
            }
        );
        assert_eq!(seen, vec![b"42P01".to_vec(), b"TimeZoneUTC".to_vec()]);
    }

    #[test]
    fn inspects_everything_when_asked() {
        let mut b = BytesMut::new();
        row_description(&mut b, &["lsn"]);
        data_row(&mut b, &[Some("0/10")]);
        command_complete(&mut b, "SELECT 1");
        ready_for_query(&mut b, TxStatus::Idle);
        let mut s = Scanner {
            inspect_all: true,
            ..Scanner::default()
        };
        let mut tags = Vec::new();
        let mut at = 0;
        while at < b.len() {
            let scanned = s
                .scan(&b[at..], |e| {
                    tags.push(match e {
                        Event::Other { tag, .. } => tag,
                        Event::CommandComplete(_) => b'C',
                        Event::ReadyForQuery(_) => b'Z',
                        _ => b'?',
                    });
                    Action::Drop
                })
                .unwrap();
            assert_eq!(scanned.forward, 0, "nothing reaches the client");
            at += scanned.edit.unwrap().0;
        }
        assert_eq!(tags, b"TDCZ");
        assert_eq!(ready_for_query_bytes(TxStatus::Failed), b"Z\0\0\0\x05E");
    }

    #[test]
    fn rejects_bad_length() {
        let mut s = Scanner::default();
        assert!(s.scan(b"D\0\0\0\x02", |_| Action::Forward).is_err());
    }

    #[test]
    fn stops_at_a_message_to_edit() {
        let mut b = BytesMut::new();
        b.extend_from_slice(PARSE_COMPLETE);
        b.extend_from_slice(b"2\0\0\0\x04");
        ready_for_query(&mut b, TxStatus::Idle);
        let mut s = Scanner::default();
        let first = s.scan(&b, |_| Action::Drop).unwrap();
        assert_eq!(
            first,
            Scanned {
                forward: 0,
                edit: Some((5, Action::Drop))
            }
        );
        let rest = s.scan(&b[5..], |_| Action::Forward).unwrap();
        assert_eq!(
            rest,
            Scanned {
                forward: 11,
                edit: None
            }
        );
    }
}
