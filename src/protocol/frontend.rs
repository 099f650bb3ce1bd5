//! Client → pooler messages of the simple and extended query protocols and COPY.
//!
//! Framing and parsing are separate: [`header`] tells whether a whole frame is buffered, so the
//! client loop can forward runs of frames with one write; [`parse`] borrows the fields it needs
//! out of one frame's body. Every length is checked before it is used.

use super::{take_cstr, ProtocolError};
use bytes::{BufMut, BytesMut};

/// Type byte and total size (type byte included) of the frame at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    pub len: usize,
}

/// Reads the frame header at the front of `buf`. `Ok(None)` if fewer than five bytes are there.
/// Lengths below 4, or above `max`, are errors: nothing legitimate sends them.
pub fn header(buf: &[u8], max: usize) -> Result<Option<Header>, ProtocolError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(ProtocolError::BadLength(len.into()));
    }
    let len = len as usize;
    if len > max {
        return Err(ProtocolError::TooLong { len, max });
    }
    Ok(Some(Header {
        tag: buf[0],
        len: len + 1,
    }))
}

/// The messages a client may send once it is logged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    Query(&'a [u8]),
    Parse {
        name: &'a [u8],
        query: &'a [u8],
        /// Everything after the name (query and parameter types), to re-send under another name.
        definition: &'a [u8],
    },
    Bind {
        portal: &'a [u8],
        statement: &'a [u8],
        /// Everything after the statement name, to re-send for another name.
        params: &'a [u8],
    },
    Describe {
        kind: u8,
        name: &'a [u8],
    },
    Execute {
        portal: &'a [u8],
        max_rows: i32,
    },
    Close {
        kind: u8,
        name: &'a [u8],
    },
    Sync,
    Flush,
    Terminate,
    CopyData,
    CopyDone,
    CopyFail,
    FunctionCall,
}

fn cstr<'a>(buf: &'a [u8], what: &'static str) -> Result<(&'a [u8], &'a [u8]), ProtocolError> {
    take_cstr(buf).ok_or(ProtocolError::Malformed(what))
}

fn i16_at<'a>(buf: &'a [u8], what: &'static str) -> Result<(i16, &'a [u8]), ProtocolError> {
    match buf {
        [a, b, rest @ ..] => Ok((i16::from_be_bytes([*a, *b]), rest)),
        _ => Err(ProtocolError::Malformed(what)),
    }
}

fn i32_at<'a>(buf: &'a [u8], what: &'static str) -> Result<(i32, &'a [u8]), ProtocolError> {
    match buf {
        [a, b, c, d, rest @ ..] => Ok((i32::from_be_bytes([*a, *b, *c, *d]), rest)),
        _ => Err(ProtocolError::Malformed(what)),
    }
}

/// Skips `count` items of `size` bytes, refusing counts the body cannot hold.
fn skip<'a>(
    buf: &'a [u8],
    count: i16,
    size: usize,
    what: &'static str,
) -> Result<&'a [u8], ProtocolError> {
    let n = usize::try_from(count).map_err(|_| ProtocolError::Malformed(what))?;
    let bytes = n.checked_mul(size).ok_or(ProtocolError::Malformed(what))?;
    buf.get(bytes..).ok_or(ProtocolError::Malformed(what))
}

/// Skips `count` length-prefixed values (-1 = NULL), as in Bind and FunctionCall.
fn skip_values<'a>(
    mut buf: &'a [u8],
    count: i16,
    what: &'static str,
) -> Result<&'a [u8], ProtocolError> {
    if count < 0 {
        return Err(ProtocolError::Malformed(what));
    }
    for _ in 0..count {
        let (len, rest) = i32_at(buf, what)?;
        buf = if len == -1 {
            rest
        } else {
            let len = usize::try_from(len).map_err(|_| ProtocolError::Malformed(what))?;
            rest.get(len..).ok_or(ProtocolError::Malformed(what))?
        };
    }
    Ok(buf)
}

fn done<'a>(
    rest: &[u8],
    msg: Message<'a>,
    what: &'static str,
) -> Result<Message<'a>, ProtocolError> {
    if rest.is_empty() {
        Ok(msg)
    } else {
        Err(ProtocolError::Malformed(what))
    }
}

fn kind_and_name<'a>(body: &'a [u8], what: &'static str) -> Result<(u8, &'a [u8]), ProtocolError> {
    let (&kind, rest) = body.split_first().ok_or(ProtocolError::Malformed(what))?;
    if kind != b'S' && kind != b'P' {
        return Err(ProtocolError::Malformed(what));
    }
    let (name, rest) = cstr(rest, what)?;
    if !rest.is_empty() {
        return Err(ProtocolError::Malformed(what));
    }
    Ok((kind, name))
}

/// Parses one frame's body (the bytes after the 5-byte header) and checks its whole structure,
/// so that a malformed message is refused here instead of costing a server connection.
pub fn parse(tag: u8, body: &[u8]) -> Result<Message<'_>, ProtocolError> {
    match tag {
        b'Q' => {
            let (q, rest) = cstr(body, "Query")?;
            done(rest, Message::Query(q), "Query")
        }
        b'P' => {
            let (name, definition) = cstr(body, "Parse")?;
            let (query, rest) = cstr(definition, "Parse")?;
            let (n, rest) = i16_at(rest, "Parse")?;
            let rest = skip(rest, n, 4, "Parse")?;
            done(
                rest,
                Message::Parse {
                    name,
                    query,
                    definition,
                },
                "Parse",
            )
        }
        b'B' => {
            let (portal, rest) = cstr(body, "Bind")?;
            let (statement, params) = cstr(rest, "Bind")?;
            let (n, rest) = i16_at(params, "Bind")?;
            let rest = skip(rest, n, 2, "Bind")?;
            let (n, rest) = i16_at(rest, "Bind")?;
            let rest = skip_values(rest, n, "Bind")?;
            let (n, rest) = i16_at(rest, "Bind")?;
            let rest = skip(rest, n, 2, "Bind")?;
            done(
                rest,
                Message::Bind {
                    portal,
                    statement,
                    params,
                },
                "Bind",
            )
        }
        b'D' => {
            let (kind, name) = kind_and_name(body, "Describe")?;
            Ok(Message::Describe { kind, name })
        }
        b'C' => {
            let (kind, name) = kind_and_name(body, "Close")?;
            Ok(Message::Close { kind, name })
        }
        b'E' => {
            let (portal, rest) = cstr(body, "Execute")?;
            let (max_rows, rest) = i32_at(rest, "Execute")?;
            done(rest, Message::Execute { portal, max_rows }, "Execute")
        }
        b'S' => done(body, Message::Sync, "Sync"),
        b'H' => done(body, Message::Flush, "Flush"),
        b'X' => done(body, Message::Terminate, "Terminate"),
        b'd' => Ok(Message::CopyData),
        b'c' => done(body, Message::CopyDone, "CopyDone"),
        b'f' => {
            let (_, rest) = cstr(body, "CopyFail")?;
            done(rest, Message::CopyFail, "CopyFail")
        }
        b'F' => {
            let (_oid, rest) = i32_at(body, "FunctionCall")?;
            let (n, rest) = i16_at(rest, "FunctionCall")?;
            let rest = skip(rest, n, 2, "FunctionCall")?;
            let (n, rest) = i16_at(rest, "FunctionCall")?;
            let rest = skip_values(rest, n, "FunctionCall")?;
            let (_, rest) = i16_at(rest, "FunctionCall")?;
            done(rest, Message::FunctionCall, "FunctionCall")
        }
        other => Err(ProtocolError::UnknownMessage(other)),
    }
}

/// A password, SASLInitialResponse or SASLResponse body: all share the type byte `p`, and only
/// the authentication step in progress tells which one it is.
pub fn sasl_initial_response(body: &[u8]) -> Result<(&[u8], &[u8]), ProtocolError> {
    let (mechanism, rest) = cstr(body, "SASLInitialResponse")?;
    let (len, rest) = i32_at(rest, "SASLInitialResponse")?;
    if len == -1 {
        return Ok((mechanism, &[]));
    }
    if usize::try_from(len).ok() != Some(rest.len()) {
        return Err(ProtocolError::Malformed("SASLInitialResponse"));
    }
    Ok((mechanism, rest))
}

/// A cleartext or md5 PasswordMessage: one NUL-terminated string.
pub fn password(body: &[u8]) -> Result<&[u8], ProtocolError> {
    let (pw, rest) = cstr(body, "PasswordMessage")?;
    done(rest, Message::Sync, "PasswordMessage").map(|_| pw)
}

fn frame(buf: &mut BytesMut, tag: u8, parts: &[&[u8]]) {
    let len: usize = 4 + parts.iter().map(|p| p.len()).sum::<usize>();
    buf.reserve(len + 1);
    buf.put_u8(tag);
    buf.put_i32(len as i32);
    for p in parts {
        buf.put_slice(p);
    }
}

/// Parse under `name`, with a definition taken from a client's Parse.
pub fn encode_parse(buf: &mut BytesMut, name: &[u8], definition: &[u8]) {
    frame(buf, b'P', &[name, b"\0", definition]);
}

/// Bind for `statement`, with everything else taken from a client's Bind.
pub fn encode_bind(buf: &mut BytesMut, portal: &[u8], statement: &[u8], params: &[u8]) {
    frame(buf, b'B', &[portal, b"\0", statement, b"\0", params]);
}

/// Describe (`D`) or Close (`C`) of a statement (`S`) or portal (`P`).
pub fn encode_target(buf: &mut BytesMut, tag: u8, kind: u8, name: &[u8]) {
    frame(buf, tag, &[&[kind], name, b"\0"]);
}

/// A simple Query, for statements the pooler itself sends to a server.
pub fn encode_query(buf: &mut BytesMut, sql: &str) {
    frame(buf, b'Q', &[sql.as_bytes(), b"\0"]);
}

pub fn encode_flush(buf: &mut BytesMut) {
    frame(buf, b'H', &[]);
}

pub fn encode_sync(buf: &mut BytesMut) {
    frame(buf, b'S', &[]);
}

pub fn encode_copy_fail(buf: &mut BytesMut, message: &str) {
    frame(buf, b'f', &[message.as_bytes(), b"\0"]);
}

pub fn encode_terminate(buf: &mut BytesMut) {
    frame(buf, b'X', &[]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_needs_five_bytes() {
        assert_eq!(header(b"Q\0\0\0", 100), Ok(None));
        assert_eq!(
            header(b"Q\0\0\0\x05x", 100),
            Ok(Some(Header { tag: b'Q', len: 6 }))
        );
    }

    #[test]
    fn header_rejects_bad_lengths() {
        assert!(matches!(
            header(b"Q\0\0\0\x03", 100),
            Err(ProtocolError::BadLength(3))
        ));
        assert!(matches!(
            header(b"Q\xff\xff\xff\xff", 100),
            Err(ProtocolError::BadLength(-1))
        ));
        assert!(matches!(
            header(b"Q\0\0\x01\0", 100),
            Err(ProtocolError::TooLong { .. })
        ));
    }

    #[test]
    fn parses_extended_messages() {
        assert_eq!(
            parse(b'P', b"s1\0select $1\0\0\x01\0\0\0\x17"),
            Ok(Message::Parse {
                name: b"s1",
                query: b"select $1",
                definition: b"select $1\0\0\x01\0\0\0\x17"
            })
        );
        let bind = b"p\0s1\0\0\x01\0\x01\0\x01\0\0\0\x02hi\0\x01\0\x01";
        assert_eq!(
            parse(b'B', bind),
            Ok(Message::Bind {
                portal: b"p",
                statement: b"s1",
                params: &bind[5..]
            })
        );
        assert_eq!(
            parse(b'E', b"\0\0\0\0\0"),
            Ok(Message::Execute {
                portal: b"",
                max_rows: 0
            })
        );
        assert_eq!(
            parse(b'C', b"Sx\0"),
            Ok(Message::Close {
                kind: b'S',
                name: b"x"
            })
        );
    }

    #[test]
    fn refuses_malformed_bodies() {
        assert!(parse(b'Q', b"select 1").is_err());
        assert!(parse(b'Q', b"select 1\0junk").is_err());
        assert!(parse(b'B', b"\0\0\0\x01\0\0\0\x01\x7f\xff\xff\xff").is_err());
        assert!(parse(b'P', b"\0q\0\xff\xff").is_err());
        assert!(parse(b'D', b"X\0").is_err());
        assert!(parse(b'S', b"x").is_err());
        assert_eq!(parse(b'z', b""), Err(ProtocolError::UnknownMessage(b'z')));
    }

    #[test]
    fn encoders_round_trip_through_the_parser() {
        let mut b = BytesMut::new();
        encode_parse(&mut b, b"g1", b"select 1\0\0\0");
        encode_bind(&mut b, b"", b"g1", b"\0\0\0\0\0\0");
        encode_target(&mut b, b'C', b'S', b"g1");
        encode_query(&mut b, "ROLLBACK");
        encode_sync(&mut b);
        let mut tags = Vec::new();
        while let Some(h) = header(&b, 1 << 20).unwrap() {
            parse(h.tag, &b[5..h.len]).unwrap();
            tags.push(h.tag);
            let _ = b.split_to(h.len);
        }
        assert_eq!(tags, b"PBCQS");
    }

    #[test]
    fn parses_sasl_initial_response() {
        let body = b"SCRAM-SHA-256\0\0\0\0\x03n,,";
        assert_eq!(
            sasl_initial_response(body),
            Ok((&b"SCRAM-SHA-256"[..], &b"n,,"[..]))
        );
        assert!(sasl_initial_response(b"SCRAM-SHA-256\0\0\0\0\x09n,,").is_err());
    }
}
