//! The pooler's own settings, answered by the pooler and never sent to a server:
//! `SET pgsluice.route TO primary | replica | auto`, `RESET pgsluice.route`,
//! `SHOW pgsluice.route`; `SET pgsluice.min_lsn = 'X/Y'` and `SHOW pgsluice.lsn` (the
//! client's read-your-writes floor). Also `LISTEN` and `UNLISTEN`, which the pooler answers
//! when one connection carries every client's channels.

use super::policy::RouteMode;
use crate::cluster::Lsn;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteCommand {
    Set(RouteMode),
    Show,
    /// Raise the client's floor to this position (it never goes down: RESET and DEFAULT
    /// leave it as it is).
    MinLsn(Option<Lsn>),
    /// The client's floor.
    ShowLsn,
}

/// Why a pooler setting's new value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadValue {
    #[error(
        "invalid value for parameter \"pgsluice.route\": \"{0}\" (use primary, replica or auto)"
    )]
    Route(String),
    #[error("invalid value for parameter \"pgsluice.min_lsn\": \"{0}\" (use a WAL position such as 16/B374D848)")]
    Lsn(String),
}

const ROUTE: &str = "pgsluice.route";
const MIN_LSN: &str = "pgsluice.min_lsn";
const LSN: &str = "pgsluice.lsn";

/// A route's value as the startup option or SET gives it.
pub fn route(value: &str) -> Result<RouteMode, BadValue> {
    RouteMode::parse(value).ok_or_else(|| BadValue::Route(value.to_owned()))
}

/// A floor's value as the startup option or SET gives it.
pub fn min_lsn(value: &str) -> Result<Lsn, BadValue> {
    Lsn::parse(value).ok_or_else(|| BadValue::Lsn(value.to_owned()))
}

/// Recognises the command in a simple Query's text. `None` for anything else, cheaply.
pub fn parse(sql: &str) -> Option<Result<RouteCommand, BadValue>> {
    let text = sql.trim().trim_end_matches(';').trim_end();
    // Cheap rejection first: every query passes through here.
    if text.len() > 64 || !matches!(text.as_bytes().first(), Some(b's' | b'S' | b'r' | b'R')) {
        return None;
    }
    let bytes = text.as_bytes();
    let first = bytes
        .iter()
        .position(u8::is_ascii_whitespace)
        .map_or(bytes, |end| &bytes[..end]);
    if ![&b"set"[..], b"show", b"reset"]
        .iter()
        .any(|k| first.eq_ignore_ascii_case(k))
    {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    if !lower.contains("pgsluice.") {
        return None;
    }
    let spaced = lower.replace('=', " = ");
    let words: Vec<&str> = spaced.split_whitespace().collect();
    let (name, value) = match words.as_slice() {
        ["show", LSN | MIN_LSN] => return Some(Ok(RouteCommand::ShowLsn)),
        ["show", ROUTE] => return Some(Ok(RouteCommand::Show)),
        ["reset", name] => (*name, None),
        ["set", name, "to" | "=", value] | ["set", "session", name, "to" | "=", value] => {
            (*name, Some(value.trim_matches(|c| c == '\'' || c == '"')))
        }
        _ => return None,
    };
    let value = value.filter(|v| *v != "default");
    match name {
        ROUTE => Some(
            value
                .map_or(Ok(RouteMode::Auto), route)
                .map(RouteCommand::Set),
        ),
        MIN_LSN => Some(value.map(min_lsn).transpose().map(RouteCommand::MinLsn)),
        _ => None,
    }
}

/// One statement of a query made only of LISTEN and UNLISTEN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Listen(String),
    Unlisten(String),
    UnlistenAll,
}

impl Listen {
    /// The command tag PostgreSQL answers it with.
    pub fn tag(&self) -> &'static str {
        match self {
            Listen::Listen(_) => "LISTEN",
            _ => "UNLISTEN",
        }
    }
}

/// PostgreSQL's longest identifier, in bytes: longer names are cut to it.
const NAME_MAX: usize = 63;

/// The statements of `sql` if every one is `LISTEN name`, `UNLISTEN name` or `UNLISTEN *`;
/// `None` for anything else (a comment included), which then goes to a server as it is.
pub fn listen(sql: &[u8]) -> Option<Vec<Listen>> {
    if !matches!(
        sql.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'l' | b'L' | b'u' | b'U')
    ) {
        return None;
    }
    let mut out = Vec::new();
    let mut rest = sql;
    loop {
        rest = trim_start(rest);
        if rest.is_empty() {
            break;
        }
        let (keyword, after) = word(rest);
        let unlisten = if keyword.eq_ignore_ascii_case(b"listen") {
            false
        } else if keyword.eq_ignore_ascii_case(b"unlisten") {
            true
        } else {
            return None;
        };
        rest = trim_start(after);
        let cmd = if unlisten && rest.first() == Some(&b'*') {
            rest = &rest[1..];
            Listen::UnlistenAll
        } else {
            let (name, after) = channel(rest)?;
            rest = after;
            if unlisten {
                Listen::Unlisten(name)
            } else {
                Listen::Listen(name)
            }
        };
        out.push(cmd);
        rest = trim_start(rest);
        match rest.first() {
            Some(b';') => rest = &rest[1..],
            None => break,
            Some(_) => return None,
        }
    }
    (!out.is_empty()).then_some(out)
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

fn word(b: &[u8]) -> (&[u8], &[u8]) {
    let n = b
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_' || **c == b'$' || **c >= 0x80)
        .count();
    b.split_at(n)
}

/// A channel name: quoted (exact), or a plain identifier (folded to lower case), cut to
/// PostgreSQL's length.
fn channel(b: &[u8]) -> Option<(String, &[u8])> {
    let (mut name, rest) = if b.first() == Some(&b'"') {
        let mut name = Vec::new();
        let mut i = 1;
        loop {
            match (b.get(i), b.get(i + 1)) {
                (Some(b'"'), Some(b'"')) => {
                    name.push(b'"');
                    i += 2;
                }
                (Some(b'"'), _) => break,
                (Some(&c), _) => {
                    name.push(c);
                    i += 1;
                }
                (None, _) => return None,
            }
        }
        (name, &b[i + 1..])
    } else {
        let (w, rest) = word(b);
        if w.is_empty() || w[0].is_ascii_digit() {
            return None;
        }
        (w.to_ascii_lowercase(), rest)
    };
    if name.is_empty() {
        return None;
    }
    name.truncate(NAME_MAX);
    Some((String::from_utf8(name).ok()?, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_of_the_command() {
        let set = |m| Some(Ok(RouteCommand::Set(m)));
        assert_eq!(
            parse("SET pgsluice.route TO replica"),
            set(RouteMode::Replica)
        );
        assert_eq!(
            parse("set pgsluice.route='primary';"),
            set(RouteMode::Primary)
        );
        assert_eq!(
            parse("SET SESSION pgsluice.route = \"auto\""),
            set(RouteMode::Auto)
        );
        assert_eq!(parse("RESET pgsluice.route"), set(RouteMode::Auto));
        assert_eq!(parse("set pgsluice.route to default"), set(RouteMode::Auto));
        assert_eq!(parse("SHOW pgsluice.route"), Some(Ok(RouteCommand::Show)));
        assert_eq!(
            parse("SET pgsluice.route TO sometimes"),
            Some(Err(BadValue::Route("sometimes".into())))
        );
        assert_eq!(
            parse("SET pgsluice.min_lsn = '16/B374D848'"),
            Some(Ok(RouteCommand::MinLsn(Lsn::parse("16/B374D848"))))
        );
        assert_eq!(
            parse("set pgsluice.min_lsn to default"),
            Some(Ok(RouteCommand::MinLsn(None)))
        );
        assert_eq!(
            parse("SET pgsluice.min_lsn = 'soon'"),
            Some(Err(BadValue::Lsn("soon".into())))
        );
        assert_eq!(parse("SHOW pgsluice.lsn;"), Some(Ok(RouteCommand::ShowLsn)));
        assert_eq!(parse("SHOW pgsluice.other"), None);
        assert_eq!(parse("SET LOCAL pgsluice.route TO replica"), None);
        assert_eq!(parse("SELECT 'set pgsluice.route to replica'"), None);
        assert_eq!(parse("SET search_path TO x"), None);
    }

    #[test]
    fn listen_statements() {
        use self::Listen as L;
        assert_eq!(
            listen(b"LISTEN Jobs; unlisten \"My \"\"Ch\"; UNLISTEN * ;"),
            Some(vec![
                L::Listen("jobs".into()),
                L::Unlisten("My \"Ch".into()),
                L::UnlistenAll
            ])
        );
        assert_eq!(listen(b"LISTEN a; SELECT 1"), None);
        assert_eq!(listen(b"LISTEN /* c */ a"), None);
        assert_eq!(listen(b"LISTEN"), None);
        assert_eq!(listen(b"LISTEN \"\""), None);
        assert_eq!(listen(b"LISTEN a b"), None);
        assert_eq!(listen(b"SELECT 1"), None);
        let long = format!("LISTEN {}", "x".repeat(70));
        assert_eq!(
            listen(long.as_bytes()),
            Some(vec![L::Listen("x".repeat(63))])
        );
    }
}
