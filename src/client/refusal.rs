//! What a statement pgsluice refuses becomes on the server: a stand-in that fails, so that the
//! client's transaction and batch fail as for any error, and the ErrorResponse the client gets
//! in the stand-in's place. For statements that would pin the client while
//! pin_session_features is off (0A000), for a currval or lastval whose server may hold another
//! client's sequence values (55000), and for the Bind of a prepared statement whose result
//! changed (`rewrite.rs`).

use crate::protocol::backend;
use crate::protocol::frontend::Message;
use crate::protocol::sqlstate;
use crate::router::effects::{Feature, Features};

/// The definition of a statement that fails at Parse (0A000: no value of type pg_node_tree
/// may be written), for a refused Parse or, its text, a refused Query.
pub(super) const STAND_IN: &[u8] = b"SELECT 'pgsluice'::pg_catalog.pg_node_tree\0\0\0";

/// An ErrorResponse with SQLSTATE 0A000 and `message`, as bytes.
pub(super) fn feature_error(message: &str) -> Vec<u8> {
    error(sqlstate::FEATURE_NOT_SUPPORTED, message)
}

fn error(code: &str, message: &str) -> Vec<u8> {
    let mut e = bytes::BytesMut::new();
    backend::error_response(&mut e, "ERROR", code, message);
    e.to_vec()
}

/// Why a currval or lastval is refused.
const FOREIGN_SEQUENCES: &str = "currval and lastval answer with this session's last nextval, \
     which ran in an earlier transaction on a server connection that other clients have used \
     since (transaction pooling): call them in the transaction that calls nextval, or use \
     INSERT ... RETURNING";

/// The ErrorResponse a refused currval or lastval gets, built once.
pub(super) fn foreign_sequences_error() -> &'static [u8] {
    static ERROR: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    ERROR.get_or_init(|| {
        error(
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
            FOREIGN_SEQUENCES,
        )
    })
}

/// A currval or lastval (in a Query or Parse) refused: its server may hold another client's
/// sequence values.
pub(super) fn foreign_sequences(msg: Message<'_>) -> Option<Refusal> {
    stand_in(msg, foreign_sequences_error())
}

/// A statement refused because it would pin the client (pin_session_features = false): in
/// its place the server runs one that fails with 0A000, so that the client's transaction
/// fails as it would for any error.
pub(super) struct Refusal {
    pub frame: bytes::BytesMut,
    /// For a Parse: its name and the stand-in's definition.
    parse: Option<(Vec<u8>, Vec<u8>)>,
    /// The error the client gets in place of the stand-in's.
    pub error: &'static [u8],
}

impl Refusal {
    pub fn message(&self) -> Message<'_> {
        match &self.parse {
            Some((name, definition)) => Message::Parse {
                name,
                query: definition.split(|&b| b == 0).next().unwrap_or(&[]),
                definition,
            },
            None => Message::Query(&self.frame[5..self.frame.len() - 1]),
        }
    }
}

/// Why a statement that would pin is refused.
fn refusal_message(f: Feature) -> String {
    let what = match f {
        Feature::AdvisoryLock => "session advisory locks",
        Feature::Listen => "LISTEN",
        Feature::TempTable => "temporary tables",
        Feature::HoldCursor => "WITH HOLD cursors",
        Feature::Prepare => "SQL PREPARE",
        Feature::Load => "LOAD",
    };
    format!(
        "{what} ({}) need a server connection of their own, and pin_session_features is off",
        f.name()
    )
}

/// The ErrorResponse of `refusal_message`, built once per feature.
fn refusal_error(f: Feature) -> &'static [u8] {
    static ERRORS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    let all = ERRORS.get_or_init(|| {
        Feature::ALL
            .iter()
            .map(|f| feature_error(&refusal_message(*f)))
            .collect()
    });
    let at = Feature::ALL.iter().position(|x| *x == f).unwrap_or(0);
    &all[at]
}

pub(super) fn refusal(msg: Message<'_>, features: Features) -> Option<Refusal> {
    let f = features.iter().next()?;
    stand_in(msg, refusal_error(f))
}

/// The stand-in of the Query or Parse `msg`: it fails with 0A000 (at Parse, before a driver
/// has described anything, where a DO block would fail only at Execute; for a Query, without
/// the PL/pgSQL CONTEXT a DO block's error carries), and the client gets `error` instead.
fn stand_in(msg: Message<'_>, error: &'static [u8]) -> Option<Refusal> {
    let mut frame = bytes::BytesMut::new();
    let parse = match msg {
        Message::Query(_) => {
            let query = &STAND_IN[..STAND_IN.len() - 3];
            crate::protocol::frontend::encode_query(&mut frame, std::str::from_utf8(query).ok()?);
            None
        }
        Message::Parse { name, .. } => {
            crate::protocol::frontend::encode_parse(&mut frame, name, STAND_IN);
            Some((name.to_vec(), STAND_IN.to_vec()))
        }
        _ => return None,
    };
    Some(Refusal {
        frame,
        parse,
        error,
    })
}
