//! `auth_file`: PgBouncer's userlist.txt, one `"user" "secret"` per line, read into the
//! configuration's users at every load (so a reload re-reads it).
//!
//! The secret is a plain password, an `md5…` hash or a `SCRAM-SHA-256$…` verifier, as in
//! `[users]`. A doubled quote stands for a quote inside a name or secret; a line that does
//! not start with a quote is a comment, as in PgBouncer.

/// The (user, secret) pairs of a userlist, or the number and reason of its first bad line.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut users = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if !line.starts_with('"') {
            continue;
        }
        let bad = |why: &str| (n + 1, why.to_owned());
        let (user, rest) =
            quoted(line, '"').ok_or_else(|| bad("the user name's quote is not closed"))?;
        let rest = rest.trim_start();
        if !rest.starts_with('"') {
            return Err(bad("expected \"user\" \"secret\""));
        }
        let (secret, rest) =
            quoted(rest, '"').ok_or_else(|| bad("the secret's quote is not closed"))?;
        if !rest.trim().is_empty() {
            return Err(bad("text after the secret"));
        }
        users.push((user, secret));
    }
    Ok(users)
}

/// The text between the `quote` that `s` starts with and its closing one (a doubled quote
/// inside stands for one), and what follows: PgBouncer's quoting in userlist.txt (`"`) and in
/// connection strings (`'`).
pub(super) fn quoted(s: &str, quote: char) -> Option<(String, &str)> {
    let body = s.strip_prefix(quote)?;
    let mut out = String::new();
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != quote {
            out.push(c);
        } else if chars.peek().is_some_and(|&(_, next)| next == quote) {
            out.push(quote);
            chars.next();
        } else {
            return Some((out, &body[i + c.len_utf8()..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_of_secret_and_comments() {
        let text = ";; users\n\"app\" \"md5a3556571e93b0d20722ba62be61e8c2d\"\n\
                    \"bob\"  \"SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy\"\n\
                    # plain one\n  \"o\"\"neil\" \"pa ss\"\"word\"\n\n";
        let users = parse(text).unwrap();
        assert_eq!(users.len(), 3);
        assert_eq!(users[0].0, "app");
        assert!(users[1].1.starts_with("SCRAM-SHA-256$"));
        assert_eq!(users[2], ("o\"neil".into(), "pa ss\"word".into()));
    }

    #[test]
    fn a_bad_line_is_named_by_number() {
        assert_eq!(parse("\"a\" \"x\"\n\"b\" \"y").unwrap_err().0, 2);
        assert_eq!(parse("\"a\" x\n").unwrap_err().0, 1);
        assert_eq!(parse("\"a\" \"x\" y\n").unwrap_err().0, 1);
    }
}
