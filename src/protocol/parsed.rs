//! A client frame parsed once and kept: its fields as offsets into the frame, so that the
//! parse outlives the borrow of the buffer and later steps (routing, forwarding) read the
//! fields again without parsing the frame again.

use super::frontend::Message;

/// Where a field lies within its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// `part`'s place in `frame`, of which it is a sub-slice.
    fn of(frame: &[u8], part: &[u8]) -> Span {
        let start = part.as_ptr() as usize - frame.as_ptr() as usize;
        debug_assert!(start + part.len() <= frame.len());
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    fn get(self, frame: &[u8]) -> &[u8] {
        &frame[self.start as usize..self.end as usize]
    }
}

/// The fields of a [`Message`], as spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fields {
    Query(Span),
    Parse {
        name: Span,
        query: Span,
        definition: Span,
    },
    Bind {
        portal: Span,
        statement: Span,
        params: Span,
    },
    Describe {
        kind: u8,
        name: Span,
    },
    Execute {
        portal: Span,
        max_rows: i32,
    },
    Close {
        kind: u8,
        name: Span,
    },
    Sync,
    Flush,
    Terminate,
    CopyData,
    CopyDone,
    CopyFail,
    FunctionCall,
}

/// One whole, valid client frame: its type byte, its length (type byte included) and its
/// parsed fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    pub tag: u8,
    pub len: usize,
    fields: Fields,
}

impl Parsed {
    /// Keeps what `msg`, parsed from `frame` (the whole frame, header included), says.
    pub fn new(frame: &[u8], msg: Message<'_>) -> Parsed {
        let s = |part: &[u8]| Span::of(frame, part);
        let fields = match msg {
            Message::Query(sql) => Fields::Query(s(sql)),
            Message::Parse {
                name,
                query,
                definition,
            } => Fields::Parse {
                name: s(name),
                query: s(query),
                definition: s(definition),
            },
            Message::Bind {
                portal,
                statement,
                params,
            } => Fields::Bind {
                portal: s(portal),
                statement: s(statement),
                params: s(params),
            },
            Message::Describe { kind, name } => Fields::Describe {
                kind,
                name: s(name),
            },
            Message::Execute { portal, max_rows } => Fields::Execute {
                portal: s(portal),
                max_rows,
            },
            Message::Close { kind, name } => Fields::Close {
                kind,
                name: s(name),
            },
            Message::Sync => Fields::Sync,
            Message::Flush => Fields::Flush,
            Message::Terminate => Fields::Terminate,
            Message::CopyData => Fields::CopyData,
            Message::CopyDone => Fields::CopyDone,
            Message::CopyFail => Fields::CopyFail,
            Message::FunctionCall => Fields::FunctionCall,
        };
        Parsed {
            tag: frame[0],
            len: frame.len(),
            fields,
        }
    }

    /// The message again, borrowing from `frame`: the same bytes it was parsed from.
    pub fn message<'a>(&self, frame: &'a [u8]) -> Message<'a> {
        match self.fields {
            Fields::Query(sql) => Message::Query(sql.get(frame)),
            Fields::Parse {
                name,
                query,
                definition,
            } => Message::Parse {
                name: name.get(frame),
                query: query.get(frame),
                definition: definition.get(frame),
            },
            Fields::Bind {
                portal,
                statement,
                params,
            } => Message::Bind {
                portal: portal.get(frame),
                statement: statement.get(frame),
                params: params.get(frame),
            },
            Fields::Describe { kind, name } => Message::Describe {
                kind,
                name: name.get(frame),
            },
            Fields::Execute { portal, max_rows } => Message::Execute {
                portal: portal.get(frame),
                max_rows,
            },
            Fields::Close { kind, name } => Message::Close {
                kind,
                name: name.get(frame),
            },
            Fields::Sync => Message::Sync,
            Fields::Flush => Message::Flush,
            Fields::Terminate => Message::Terminate,
            Fields::CopyData => Message::CopyData,
            Fields::CopyDone => Message::CopyDone,
            Fields::CopyFail => Message::CopyFail,
            Fields::FunctionCall => Message::FunctionCall,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::frontend;
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn a_kept_parse_reads_back_the_same_message() {
        let mut buf = BytesMut::new();
        frontend::encode_parse(&mut buf, b"s1", b"SELECT $1\0\0\x01\0\0\0\x17");
        frontend::encode_bind(&mut buf, b"p", b"s1", b"\0\0\0\0\0\0");
        frontend::encode_query(&mut buf, "SELECT 1");
        frontend::encode_sync(&mut buf);
        let mut at = 0;
        while at < buf.len() {
            let h = frontend::header(&buf[at..], 1 << 20).unwrap().unwrap();
            let frame = &buf[at..at + h.len];
            let msg = frontend::parse(h.tag, &frame[5..]).unwrap();
            let kept = Parsed::new(frame, msg);
            assert_eq!((kept.tag, kept.len), (h.tag, h.len));
            // A copy of the bytes elsewhere reads the same: only offsets were kept.
            let copy = frame.to_vec();
            assert_eq!(kept.message(&copy), msg);
            at += h.len;
        }
    }
}
