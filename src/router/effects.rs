//! What a statement may do to its session beyond its transaction: which settings it may change
//! (SET, RESET, set_config), which session-only features (advisory locks, LISTEN, temporary
//! tables, WITH HOLD cursors, SQL PREPARE, LOAD) it may start or end, and whether it reads or
//! advances the session's sequence values (currval, lastval; nextval, setval).
//!
//! "May": this only says where to look. What the session really has afterwards is asked of
//! the server once the transaction is over (`client::probe`), so a SET that failed or was
//! rolled back, a temporary table dropped at commit, or an unlock of a lock not held is never
//! taken for more than it is. Text that mentions none of the words involved is passed over
//! with one scan of its bytes, the cost every other statement pays.

use super::classify::{has_words, word};
pub use super::features::{Feature, Features};
use super::lexer::{tokens, Token};

/// What one or more statements may do to their session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// Settings they may change, lowercase names.
    pub settings: Vec<String>,
    /// Of those, the ones they may reset to the session's default (RESET, SET … TO DEFAULT).
    pub resets: Vec<String>,
    /// A setting whose name the text does not spell out (a quoted name, `set_config($1, …)`).
    pub unnamed_setting: bool,
    /// RESET ALL or DISCARD ALL: every setting back to its default.
    pub reset_all: bool,
    /// Features they may start.
    pub start: Features,
    /// Features they may end.
    pub end: Features,
    /// How they use the session's sequence values. Not an effect that outlives the
    /// transaction: `is_empty` and `merge` leave it out.
    pub sequences: Sequences,
}

/// How statements use the values a session's sequences last gave it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sequences {
    /// A `currval` or `lastval` before anything that may set them: it answers with what an
    /// earlier nextval of the session gave.
    pub reads: bool,
    /// `nextval` or `setval`: they set what currval answers. (So may commands that do not
    /// name it: `may_advance_sequences`.)
    pub advances: bool,
}

impl Effects {
    /// No effect that outlives the transaction (sequence use aside).
    pub fn is_empty(&self) -> bool {
        self.settings.is_empty()
            && !self.unnamed_setting
            && !self.reset_all
            && self.start.is_empty()
            && self.end.is_empty()
    }

    /// Adds what `other` may do.
    pub fn merge(&mut self, other: &Effects) {
        for name in &other.settings {
            add(&mut self.settings, name);
        }
        for name in &other.resets {
            add(&mut self.resets, name);
        }
        self.unnamed_setting |= other.unnamed_setting;
        self.reset_all |= other.reset_all;
        self.start = self.start.union(other.start);
        self.end = self.end.union(other.end);
    }

    fn setting(&mut self, name: &str, reset: bool) {
        add(&mut self.settings, name);
        if reset {
            add(&mut self.resets, name);
        }
    }
}

fn add(list: &mut Vec<String>, name: &str) {
    if !list.iter().any(|n| n == name) {
        list.push(name.to_owned());
    }
}

/// Keywords that start a statement with an effect.
const LEADING: [&[u8]; 12] = [
    b"set",
    b"reset",
    b"discard",
    b"listen",
    b"unlisten",
    b"prepare",
    b"deallocate",
    b"load",
    b"declare",
    b"close",
    b"drop",
    b"create",
];

/// The sequence functions that read or set a session's values: each has a `v`.
const SEQUENCE: [&[u8]; 4] = [b"currval", b"lastval", b"nextval", b"setval"];

/// Words with an effect anywhere in a statement: function names (which all hold `_`), and
/// `temp` of `SELECT … INTO TEMP`.
const INSIDE: [&[u8]; 5] = [
    b"pg_advisory",
    b"pg_try_advisory",
    b"set_config",
    b"pg_temp",
    b"temp",
];

/// Per byte: whether it continues a word.
const WORD: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
        b += 1;
    }
    t
};

/// Whether `sql` may have an effect: a statement (at the start, or after a `;`) whose first
/// word is one of `LEADING`, or a word anywhere that starts with one of `INSIDE` or
/// `SEQUENCE`. Only the bytes such text must hold are looked at (`;`, `_` of every function
/// name, `m` of `temp`, `v` of the sequence functions),
/// found eight at a time, so an ordinary statement costs a few instructions per word of text.
/// What this lets through is read in full; a `;` or comment inside a literal only makes it
/// read more than it needs to.
fn mentions_any(sql: &[u8]) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    if leads(sql) {
        return true;
    }
    let n = sql.len();
    let mut c = 0;
    while c < n {
        let chunk: [u8; 8] = match sql.get(c..c + 8) {
            Some(full) => full.try_into().unwrap_or_default(),
            None => {
                let mut last = [0u8; 8];
                last[..n - c].copy_from_slice(&sql[c..]);
                last
            }
        };
        // Folding case makes `M` an `m`, `V` a `v`, `_` a DEL and leaves `;` as it is; then
        // the usual test for a zero byte in a word finds each (and now and then a byte next
        // to one).
        let x = u64::from_le_bytes(chunk) | 0x2020_2020_2020_2020;
        let zero = |y: u64| y.wrapping_sub(LO) & !y & HI;
        let mut hits = zero(x ^ (LO * 0x6d))
            | zero(x ^ (LO * 0x7f))
            | zero(x ^ (LO * 0x3b))
            | zero(x ^ (LO * 0x76));
        while hits != 0 {
            let at = c + hits.trailing_zeros() as usize / 8;
            hits &= hits - 1;
            if at < n && effect_at(sql, at) {
                return true;
            }
        }
        c += 8;
    }
    false
}

/// Whether the byte at `at` (a candidate of `mentions_any`) is where an effect shows. Each
/// word looked for is found at one of its letters, where it starts a known number of bytes
/// back: no walk to the start of the word around it (text in snake_case is full of `_`).
fn effect_at(sql: &[u8], at: usize) -> bool {
    match sql[at] {
        b';' => leads(&sql[at + 1..]),
        // The first `_` of every function of INSIDE follows `pg` or `set`.
        b'_' => word_at(sql, at, 2, &INSIDE) || word_at(sql, at, 3, &INSIDE),
        // `m` is the third letter of `temp`.
        b'm' | b'M' => word_at(sql, at, 2, &INSIDE),
        // `v` is the fifth letter of currval, lastval and nextval, the fourth of setval.
        b'v' | b'V' => word_at(sql, at, 4, &SEQUENCE) || word_at(sql, at, 3, &SEQUENCE),
        _ => false,
    }
}

/// Whether a word starting `back` bytes before `at` starts with one of `words`.
fn word_at(sql: &[u8], at: usize, back: usize, words: &[&[u8]]) -> bool {
    at.checked_sub(back)
        .is_some_and(|s| starts_word(sql, s) && starts_with_any(&sql[s..], words))
}

/// Whether a word the prefilter looks for may start at `s`: not after a letter or `_`, which
/// would make it part of a longer word. A `$` or digit before it may end a word (after `$$`
/// closing a string, or a parameter `$1`, the lexer starts a new one).
fn starts_word(sql: &[u8], s: usize) -> bool {
    s == 0 || !(sql[s - 1].is_ascii_alphabetic() || sql[s - 1] == b'_')
}

/// Whether `word` starts with one of `words`, in any case.
fn starts_with_any(word: &[u8], words: &[&[u8]]) -> bool {
    words.iter().any(|w| {
        word.get(..w.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(w))
    })
}

/// Whether the statement `text` starts with one of `LEADING` (or with a comment, which would
/// take reading in full to see past).
fn leads(text: &[u8]) -> bool {
    let mut i = 0;
    while i < text.len() && (text[i].is_ascii_whitespace() || text[i] == b'(') {
        i += 1;
    }
    let start = i;
    if matches!(&text[i..], [b'/', b'*', ..] | [b'-', b'-', ..]) {
        return true;
    }
    while i < text.len() && WORD[text[i] as usize] {
        i += 1;
    }
    let word = &text[start..i];
    let Some(first) = word.first().map(|b| b | 0x20) else {
        return false;
    };
    LEADING
        .iter()
        .any(|w| w.len() == word.len() && w[0] == first && w.eq_ignore_ascii_case(word))
}

/// Whether a statement of `sql` starts with one of `ADVANCING`, commands that may call
/// `nextval` without naming it. The first word, and the first word after each `;`, are
/// looked at; only if one after a `;` is one of them is the text read in full (the `;` may be
/// in a literal).
pub fn may_advance_sequences(sql: &[u8]) -> bool {
    if first_advances(sql) {
        return true;
    }
    // A `;` that ends the text starts nothing (`contains` finds a byte the fast way).
    let body = sql.trim_ascii_end();
    let body = body.strip_suffix(b";").unwrap_or(body);
    if !body.contains(&b';') {
        return false;
    }
    let after_semicolon = |(at, b): (usize, &u8)| *b == b';' && first_advances(&body[at + 1..]);
    if !body.iter().enumerate().any(after_semicolon) {
        return false;
    }
    let text = String::from_utf8_lossy(sql);
    let Ok(toks) = tokens(&text) else {
        return false;
    };
    toks.split(|t| *t == Token::Punct(';')).any(|t| {
        let start = t
            .iter()
            .position(|x| *x != Token::Punct('('))
            .unwrap_or(t.len());
        word(&t[start..], 0).is_some_and(|w| ADVANCING.contains(&w))
    })
}

fn first_advances(sql: &[u8]) -> bool {
    let start = sql
        .iter()
        .position(|b| !b.is_ascii_whitespace() && *b != b'(')
        .unwrap_or(sql.len());
    let text = &sql[start..];
    let end = text
        .iter()
        .position(|b| !WORD[*b as usize])
        .unwrap_or(text.len());
    let word = &text[..end];
    ADVANCING
        .iter()
        .any(|c| c.as_bytes().eq_ignore_ascii_case(word))
}

/// Commands that may call nextval without naming it: through a column's default (INSERT,
/// COPY FROM, MERGE) or a procedure (CALL, DO).
const ADVANCING: [&str; 5] = ["insert", "copy", "merge", "call", "do"];

/// Whether `of(sql)` may find anything: the cheap test, for text that mostly has nothing.
pub fn may_affect(sql: &[u8]) -> bool {
    mentions_any(sql)
}

/// What the statements of `sql` may do to their session.
pub fn of(sql: &[u8]) -> Effects {
    if !may_affect(sql) {
        return Effects::default();
    }
    read(sql)
}

/// `of` without the prefilter: every statement read in full. The `sql` fuzz target holds the
/// prefilter to it.
pub fn read(sql: &[u8]) -> Effects {
    let mut fx = Effects::default();
    // Keywords are ASCII: text in another encoding reads the same after a lossy decode.
    let text = String::from_utf8_lossy(sql);
    let Ok(toks) = tokens(&text) else {
        return fx;
    };
    // Whether a statement so far may have set the session's sequence values.
    let mut advanced = false;
    for statement in toks.split(|t| *t == Token::Punct(';')) {
        one(statement, &mut fx, &mut advanced);
    }
    set_config_names(&text, &mut fx);
    fx
}

fn one(t: &[Token], fx: &mut Effects, advanced: &mut bool) {
    let start = t
        .iter()
        .position(|x| *x != Token::Punct('('))
        .unwrap_or(t.len());
    let t = &t[start..];
    *advanced |= word(t, 0).is_some_and(|w| ADVANCING.contains(&w));
    match word(t, 0) {
        Some("set") => set(t, fx),
        Some("reset") => reset(t, fx),
        Some("discard") => match word(t, 1) {
            Some("all") => {
                fx.reset_all = true;
                fx.end = all_but_load();
            }
            Some("temp" | "temporary") => fx.end.insert(Feature::TempTable),
            _ => {}
        },
        Some("listen") => fx.start.insert(Feature::Listen),
        Some("unlisten") => fx.end.insert(Feature::Listen),
        Some("prepare") if word(t, 1) != Some("transaction") => fx.start.insert(Feature::Prepare),
        Some("deallocate") => fx.end.insert(Feature::Prepare),
        Some("load") => fx.start.insert(Feature::Load),
        Some("declare") if has_words(t, ["with", "hold"]) => fx.start.insert(Feature::HoldCursor),
        Some("close") => fx.end.insert(Feature::HoldCursor),
        Some("drop") => fx.end.insert(Feature::TempTable),
        Some("create") if creates_temp(t) => fx.start.insert(Feature::TempTable),
        _ => {}
    }
    if has_words(t, ["into", "temp"]) || has_words(t, ["into", "temporary"]) {
        fx.start.insert(Feature::TempTable);
    }
    if t.iter()
        .any(|x| matches!(x, Token::Word(w) if w == "pg_temp"))
    {
        fx.start.insert(Feature::TempTable);
    }
    for (i, tok) in t.iter().enumerate() {
        let name = match tok {
            Token::Word(w) if t.get(i + 1) == Some(&Token::Punct('(')) => w.as_str(),
            Token::QuotedCall(w) => w.as_str(),
            _ => continue,
        };
        match name {
            "pg_advisory_lock"
            | "pg_advisory_lock_shared"
            | "pg_try_advisory_lock"
            | "pg_try_advisory_lock_shared" => fx.start.insert(Feature::AdvisoryLock),
            "pg_advisory_unlock" | "pg_advisory_unlock_shared" | "pg_advisory_unlock_all" => {
                fx.end.insert(Feature::AdvisoryLock)
            }
            "currval" | "lastval" => fx.sequences.reads |= !*advanced,
            "nextval" | "setval" => {
                fx.sequences.advances = true;
                *advanced = true;
            }
            _ => {}
        }
    }
}

/// Every feature but LOAD, which nothing but the end of the connection undoes.
fn all_but_load() -> Features {
    let mut f = Features::NONE;
    for x in Feature::ALL {
        if x != Feature::Load {
            f.insert(x);
        }
    }
    f
}

/// CREATE [GLOBAL | LOCAL] {TEMP | TEMPORARY} … (a table, sequence or view), unless it goes
/// at commit.
fn creates_temp(t: &[Token]) -> bool {
    t.iter()
        .skip(1)
        .take(4)
        .any(|x| matches!(x, Token::Word(w) if w == "temp" || w == "temporary"))
        && !(has_words(t, ["on", "commit"]) && has_words(t, ["commit", "drop"]))
}

/// `SET [SESSION] name {TO | =} …` and its special forms; SET LOCAL, SET TRANSACTION and SET
/// CONSTRAINTS end with the transaction.
fn set(t: &[Token], fx: &mut Effects) {
    let mut i = 1;
    match word(t, 1) {
        Some("local" | "transaction" | "constraints") => return,
        Some("session") => match word(t, 2) {
            Some("characteristics") => {
                for name in [
                    "default_transaction_isolation",
                    "default_transaction_read_only",
                    "default_transaction_deferrable",
                ] {
                    fx.setting(name, false);
                }
                return;
            }
            Some("authorization") => {
                let reset = word(t, 3) == Some("default");
                fx.setting("session_authorization", reset);
                fx.setting("role", reset);
                return;
            }
            _ => i = 2,
        },
        _ => {}
    }
    let (name, next) = match (word(t, i), word(t, i + 1)) {
        (Some("time"), Some("zone")) => ("timezone".to_owned(), i + 2),
        (Some("names"), _) => ("client_encoding".to_owned(), i + 1),
        (Some("schema"), _) => ("search_path".to_owned(), i + 1),
        (Some("xml"), Some("option")) => ("xmloption".to_owned(), i + 2),
        (Some("role"), _) => ("role".to_owned(), i + 1),
        _ => match dotted_name(t, i) {
            Some((name, after)) => {
                // `SET x TO DEFAULT` is a RESET.
                let value = match t.get(after) {
                    Some(Token::Word(w)) if w == "to" => after + 1,
                    Some(Token::Punct('=')) => after + 1,
                    _ => after,
                };
                let reset = word(t, value) == Some("default") && t.len() == value + 1;
                fx.setting(&name, reset);
                return;
            }
            None => {
                fx.unnamed_setting = true;
                return;
            }
        },
    };
    // SET TIME ZONE LOCAL and SET ROLE NONE are resets too.
    let reset = matches!(word(t, next), Some("default" | "local" | "none"));
    fx.setting(&name, reset);
}

/// `RESET name`, `RESET ALL` and the special forms.
fn reset(t: &[Token], fx: &mut Effects) {
    match (word(t, 1), word(t, 2)) {
        (Some("all"), _) => fx.reset_all = true,
        (Some("time"), Some("zone")) => fx.setting("timezone", true),
        (Some("session"), Some("authorization")) => {
            fx.setting("session_authorization", true);
            fx.setting("role", true);
        }
        _ => match dotted_name(t, 1) {
            Some((name, _)) => fx.setting(&name, true),
            None => fx.unnamed_setting = true,
        },
    }
}

/// `a` or `a.b` starting at `i`, and the index after it.
fn dotted_name(t: &[Token], mut i: usize) -> Option<(String, usize)> {
    let mut name = word(t, i)?.to_owned();
    i += 1;
    while t.get(i) == Some(&Token::Punct('.')) {
        name.push('.');
        name.push_str(word(t, i + 1)?);
        i += 2;
    }
    Some((name, i))
}

/// The names `set_config('name', …)` calls give in a literal; any other first argument is a
/// setting the text does not name.
fn set_config_names(text: &str, fx: &mut Effects) {
    const CALL: &str = "set_config";
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = lower[from..].find(CALL) {
        let start = from + at;
        let after = start + CALL.len();
        from = after;
        // Inside a longer name (`my_set_config`) it is another function.
        if start > 0 && WORD[text.as_bytes()[start - 1] as usize] {
            continue;
        }
        let rest = text[after..].trim_start();
        let Some(args) = rest.strip_prefix('(') else {
            continue;
        };
        let args = args.trim_start();
        let literal = args
            .strip_prefix('\'')
            .or_else(|| args.strip_prefix("E'"))
            .or_else(|| args.strip_prefix("e'"));
        match literal.and_then(|l| l.find('\'').map(|end| &l[..end])) {
            Some(name) if !name.is_empty() && !name.contains('\\') => {
                fx.setting(&name.to_ascii_lowercase(), false)
            }
            _ => fx.unnamed_setting = true,
        }
    }
}

#[cfg(test)]
mod tests;
