//! A small SQL tokenizer for the classifier: just enough of PostgreSQL's lexical rules to
//! never mistake text inside a string literal, quoted identifier, dollar-quoted body or
//! comment for a keyword.

/// One token. Words are lowercased; literals carry no text because the classifier never
/// needs it, and a quoted identifier only where its text is in `sql` (a range, not a copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    Word(String),
    /// The bytes between the quotes (`""` still doubled).
    QuotedIdent(u32, u32),
    /// A quoted identifier followed by `(`, with its exact text.
    QuotedCall(String),
    Literal,
    Param,
    Punct(char),
    /// A block comment `/* pgsluice: WORD */`: a routing hint, WORD lowercased.
    Hint(String),
}

/// Tokenizes `sql`. Unterminated strings or comments end the text (the classifier treats
/// what it cannot read as a write).
pub fn tokens(sql: &str) -> Result<Vec<Token>, ()> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let start = i;
                i = skip_block_comment(b, i)?;
                if let Some(h) = hint(&sql[start + 2..i - 2]) {
                    out.push(Token::Hint(h));
                }
            }
            b'\'' => {
                // E'..' escapes are handled where the word E is read; here plain quoting.
                i = skip_quoted(b, i, b'\'', false)?;
                out.push(Token::Literal);
            }
            b'"' => {
                let start = i;
                i = skip_quoted(b, i, b'"', false)?;
                // A quoted name called as a function keeps its text, so that
                // `"nextval"('s')` is seen as the call it is.
                let next = b[i..].iter().find(|c| !c.is_ascii_whitespace());
                if next == Some(&b'(') {
                    out.push(Token::QuotedCall(
                        unquoted(&sql[start + 1..i - 1]).into_owned(),
                    ));
                } else {
                    out.push(Token::QuotedIdent(start as u32 + 1, i as u32 - 1));
                }
            }
            b'$' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                out.push(Token::Param);
            }
            b'$' => {
                i = skip_dollar_quoted(b, i)?;
                out.push(Token::Literal);
            }
            c if c.is_ascii_digit()
                || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_')
                {
                    i += 1;
                }
                out.push(Token::Literal);
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let token;
                (i, token) = word(sql, i)?;
                out.push(token);
            }
            c => {
                out.push(Token::Punct(c as char));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Skips a block comment starting at `i`; they nest in PostgreSQL. Returns where it ends.
fn skip_block_comment(b: &[u8], mut i: usize) -> Result<usize, ()> {
    let mut depth = 0;
    loop {
        if i + 1 >= b.len() {
            return Err(());
        }
        if b[i] == b'/' && b[i + 1] == b'*' {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b[i + 1] == b'/' {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return Ok(i);
            }
        } else {
            i += 1;
        }
    }
}

/// Skips `$tag$ … $tag$` (the tag may be empty) starting at `i`. Returns where it ends.
fn skip_dollar_quoted(b: &[u8], i: usize) -> Result<usize, ()> {
    let end = b[i + 1..].iter().position(|&x| x == b'$').ok_or(())? + i + 1;
    let tag = &b[i..=end];
    if !tag[1..tag.len() - 1]
        .iter()
        .all(|x| x.is_ascii_alphanumeric() || *x == b'_')
    {
        return Err(());
    }
    let body_start = end + 1;
    let close = find(&b[body_start..], tag).ok_or(())?;
    Ok(body_start + close + tag.len())
}

/// The word starting at `i`, or the literal it prefixes: E'…' (escape string), B'…', X'…',
/// U&'…' (and U&"…", a quoted name). Returns where it ends, and the token.
fn word(sql: &str, mut i: usize) -> Result<(usize, Token), ()> {
    let b = sql.as_bytes();
    let start = i;
    while i < b.len()
        && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$' || b[i] >= 0x80)
    {
        i += 1;
    }
    let word = &sql[start..i];
    if b.get(i) == Some(&b'\'') && matches!(word, "e" | "E" | "b" | "B" | "x" | "X") {
        let i = skip_quoted(b, i, b'\'', matches!(word, "e" | "E"))?;
        return Ok((i, Token::Literal));
    }
    if b.get(i) == Some(&b'&')
        && matches!(word, "u" | "U")
        && matches!(b.get(i + 1), Some(b'\'' | b'"'))
    {
        let q = b[i + 1];
        let end = skip_quoted(b, i + 1, q, false)?;
        let token = if q == b'\'' {
            Token::Literal
        } else {
            Token::QuotedIdent(i as u32 + 2, end as u32 - 1)
        };
        let i = end;
        return Ok((i, token));
    }
    Ok((i, Token::Word(word.to_ascii_lowercase())))
}

/// A quoted identifier's text from what stands between its quotes (`""` is one `"`).
pub(super) fn unquoted(raw: &str) -> std::borrow::Cow<'_, str> {
    match raw.contains("\"\"") {
        true => std::borrow::Cow::Owned(raw.replace("\"\"", "\"")),
        false => std::borrow::Cow::Borrowed(raw),
    }
}

/// The word of a `pgsluice: WORD` comment body.
fn hint(body: &str) -> Option<String> {
    let rest = body.trim_start();
    let rest = rest
        .get(..9)
        .filter(|p| p.eq_ignore_ascii_case("pgsluice:"))
        .map(|_| &rest[9..])?;
    let word = rest.trim();
    (!word.is_empty() && word.bytes().all(|b| b.is_ascii_alphabetic()))
        .then(|| word.to_ascii_lowercase())
}

/// Skips a quoted run starting at `start` (the opening quote); a doubled quote is an escaped
/// one, and with `backslash` a backslash escapes the next byte. Returns the index after it.
fn skip_quoted(b: &[u8], start: usize, q: u8, backslash: bool) -> Result<usize, ()> {
    let mut i = start + 1;
    while i < b.len() {
        if backslash && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return Ok(i + 1);
        }
        i += 1;
    }
    Err(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(sql: &str) -> Vec<String> {
        tokens(sql)
            .unwrap()
            .into_iter()
            .filter_map(|t| match t {
                Token::Word(w) => Some(w),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn keywords_inside_literals_and_comments_are_not_words() {
        let sql = "SELECT 'delete from t', \"update\", $$insert$$, $x$drop$x$, E'it\\'s update' \
                   -- delete\n /* update /* nested */ insert */ FROM t";
        assert_eq!(words(sql), vec!["select", "from", "t"]);
    }

    #[test]
    fn parameters_and_numbers() {
        let t = tokens("select $1 + 2.5e3").unwrap();
        assert_eq!(
            t,
            vec![
                Token::Word("select".into()),
                Token::Param,
                Token::Punct('+'),
                Token::Literal
            ]
        );
    }

    #[test]
    fn hints_are_comments_that_say_pgsluice() {
        let t = tokens("/* pgsluice: Replica */ SELECT 1 /*pgsluice:primary*/").unwrap();
        assert_eq!(t[0], Token::Hint("replica".into()));
        assert_eq!(t[3], Token::Hint("primary".into()));
        let t =
            tokens("SELECT '/* pgsluice: replica */' /* pgsluice */ /* pgsluice: a b */").unwrap();
        assert!(!t.iter().any(|t| matches!(t, Token::Hint(_))), "{t:?}");
    }

    #[test]
    fn unterminated_text_is_an_error() {
        assert!(tokens("select 'abc").is_err());
        assert!(tokens("select /* abc").is_err());
        assert!(tokens("select $$abc").is_err());
    }
}
