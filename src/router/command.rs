//! `SET pgsluice.route TO primary | replica | auto`, `RESET pgsluice.route` and
//! `SHOW pgsluice.route`: answered by the pooler, never sent to a server.

use super::policy::RouteMode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteCommand {
    Set(RouteMode),
    Show,
}

/// Why a `SET pgsluice.route` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for parameter \"pgsluice.route\": \"{0}\" (use primary, replica or auto)")]
pub struct BadValue(pub String);

const NAME: &str = "pgsluice.route";

/// Recognises the command in a simple Query's text. `None` for anything else, cheaply.
pub fn parse(sql: &str) -> Option<Result<RouteCommand, BadValue>> {
    let text = sql.trim().trim_end_matches(';').trim_end();
    // Cheap rejection first: every query passes through here.
    if text.len() > 64 || !matches!(text.as_bytes().first(), Some(b's' | b'S' | b'r' | b'R')) {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    if !lower.contains(NAME) {
        return None;
    }
    let spaced = lower.replace('=', " = ");
    let words: Vec<&str> = spaced.split_whitespace().collect();
    match words.as_slice() {
        ["show", NAME] => Some(Ok(RouteCommand::Show)),
        ["reset", NAME] | ["set", NAME, "to" | "=", "default"] => {
            Some(Ok(RouteCommand::Set(RouteMode::Auto)))
        }
        ["set", NAME, "to" | "=", value] | ["set", "session", NAME, "to" | "=", value] => {
            let value = value.trim_matches(|c| c == '\'' || c == '"');
            Some(
                RouteMode::parse(value)
                    .map(RouteCommand::Set)
                    .ok_or_else(|| BadValue(value.to_owned())),
            )
        }
        _ => None,
    }
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
            Some(Err(BadValue("sometimes".into())))
        );
        assert_eq!(parse("SET LOCAL pgsluice.route TO replica"), None);
        assert_eq!(parse("SELECT 'set pgsluice.route to replica'"), None);
        assert_eq!(parse("SET search_path TO x"), None);
    }
}
