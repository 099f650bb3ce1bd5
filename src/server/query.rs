//! A simple-protocol query of the pooler's own: on its control-plane connections (health
//! checks, lag polling) and on a client's server between its work (what the session holds,
//! the write position). Text results only, small and bounded.

use super::ServerConn;
use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Most bytes a control-plane reply may take; more means the query was not what we sent.
const MAX_REPLY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("server error {code}: {message}")]
    Server { code: String, message: String },
    #[error("unexpected reply from server")]
    Protocol,
}

/// One row: each column as text, NULL as None.
pub type Row = Vec<Option<String>>;

/// Runs `sql` and returns its rows once the server is ready again. The caller bounds the time.
pub async fn simple(conn: &mut ServerConn, sql: &str) -> Result<Vec<Row>, QueryError> {
    match several(conn, sql, |_, _| {}, None).await? {
        (_, Some(e)) => Err(e),
        (rows, None) => Ok(rows),
    }
}

/// Runs `sql`, which may hold several statements, and returns the rows of those that ran
/// with the error that stopped the rest, if any. `parameter` hears what the server reports
/// on the way (lowercase names); notifications that come meanwhile (on a server of a client
/// that LISTENs) are added to `notes` as they came (None: dropped). The caller bounds the
/// time.
pub async fn several(
    conn: &mut ServerConn,
    sql: &str,
    mut parameter: impl FnMut(&str, &str),
    notes: Option<&mut BytesMut>,
) -> Result<(Vec<Row>, Option<QueryError>), QueryError> {
    let mut out = BytesMut::new();
    crate::protocol::frontend::encode_query(&mut out, sql);
    conn.stream.write_all(&out).await?;
    replies(conn, &mut parameter, notes).await
}

/// Runs `sql` with `param` as its $1 (the extended protocol: the value never becomes part of
/// the SQL text) and returns its rows. The caller bounds the time.
pub async fn with_param(
    conn: &mut ServerConn,
    sql: &str,
    param: &str,
) -> Result<Vec<Row>, QueryError> {
    use postgres_protocol::message::frontend;
    use postgres_protocol::IsNull;
    let mut out = BytesMut::new();
    let encoding = |_| std::io::Error::from(std::io::ErrorKind::InvalidInput);
    frontend::parse("", sql, [], &mut out).map_err(encoding)?;
    frontend::bind(
        "",
        "",
        [],
        [param],
        |p, buf| {
            buf.extend_from_slice(p.as_bytes());
            Ok::<_, Box<dyn std::error::Error + Sync + Send>>(IsNull::No)
        },
        [],
        &mut out,
    )
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    frontend::execute("", 0, &mut out).map_err(encoding)?;
    frontend::sync(&mut out);
    conn.stream.write_all(&out).await?;
    match replies(conn, &mut |_, _| {}, None).await? {
        (_, Some(e)) => Err(e),
        (rows, None) => Ok(rows),
    }
}

/// The replies to what was sent, up to ReadyForQuery; notifications, whole, to `notes`.
async fn replies(
    conn: &mut ServerConn,
    parameter: &mut impl FnMut(&str, &str),
    mut notes: Option<&mut BytesMut>,
) -> Result<(Vec<Row>, Option<QueryError>), QueryError> {
    use fallible_iterator::FallibleIterator;
    let mut rows = Vec::new();
    let mut error = None;
    loop {
        let msg = loop {
            if let Some(notes) = notes.as_deref_mut() {
                if let Some(len) = notification_len(&conn.buf) {
                    notes.extend_from_slice(&conn.buf.split_to(len));
                    continue;
                }
            }
            if let Some(m) = Message::parse(&mut conn.buf).map_err(|_| QueryError::Protocol)? {
                break m;
            }
            if conn.buf.len() > MAX_REPLY {
                return Err(QueryError::Protocol);
            }
            if conn.stream.read_buf(&mut conn.buf).await? == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
        };
        match msg {
            Message::DataRow(body) => {
                let mut row = Vec::new();
                let buf = body.buffer();
                let mut ranges = body.ranges();
                while let Some(r) = ranges.next().map_err(|_| QueryError::Protocol)? {
                    row.push(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
                }
                rows.push(row);
            }
            Message::ErrorResponse(body) => {
                let (code, message, well_formed) = super::login::error_fields(&body);
                if !well_formed {
                    return Err(QueryError::Protocol);
                }
                error = Some(QueryError::Server { code, message });
            }
            Message::ParameterStatus(body) => {
                let name = body.name().map_err(|_| QueryError::Protocol)?;
                let value = body.value().map_err(|_| QueryError::Protocol)?;
                parameter(&name.to_ascii_lowercase(), value);
            }
            Message::ReadyForQuery(_) => return Ok((rows, error)),
            Message::CopyInResponse(_) | Message::CopyOutResponse(_) => {
                return Err(QueryError::Protocol)
            }
            _ => {}
        }
    }
}

/// The length of the NotificationResponse at the start of `buf`, if one is there whole.
fn notification_len(buf: &[u8]) -> Option<usize> {
    let [b'A', a, b, c, d, ..] = *buf else {
        return None;
    };
    let body = u32::from_be_bytes([a, b, c, d]) as usize;
    (body >= 4 && buf.len() > body).then_some(1 + body)
}
