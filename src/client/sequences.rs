//! Whether a client's currval or lastval may run on its link's server. Both answer with what
//! the session's last nextval gave; in transaction mode that ran on whichever server the
//! client had then, and another client's nextval may have come since. So one runs only where
//! the values are the client's own: on the server it used last if no one else has used it
//! since, or after the client's own nextval (or INSERT, COPY, MERGE, CALL, DO, which may call
//! it) on this link. Elsewhere it is refused with 55000 rather than answered with another
//! client's value.

use super::link::SequenceValues;
use crate::protocol::frontend::Message;
use crate::router::effects::{self, Effects};

/// What becomes of a client's message on a link whose server may hold another client's
/// sequence values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Pass,
    /// It reads the values before setting any here: refused.
    Refuse,
}

/// Looks at the Query, Parse or Bind `msg`, whose text is `text` and effects `fx` (none when
/// the prefilter found nothing), on a link whose server's values are `values`: marks them the
/// client's once the client may set them, and says whether `msg` must be refused. A Parse is
/// refused only when unnamed (a Bind and Execute follow at once); a named statement is judged
/// at each Bind, where it runs.
pub(super) fn judge(
    values: &mut SequenceValues,
    msg: Message<'_>,
    text: &[u8],
    fx: Option<&Effects>,
) -> Verdict {
    if *values == SequenceValues::Own {
        return Verdict::Pass;
    }
    let used = fx.map(|fx| fx.sequences).unwrap_or_default();
    let runs = matches!(
        msg,
        Message::Query(_) | Message::Bind { .. } | Message::Parse { name: b"", .. }
    );
    if used.reads && runs {
        return Verdict::Refuse;
    }
    if used.advances || effects::may_advance_sequences(text) {
        *values = SequenceValues::Own;
    }
    Verdict::Pass
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(values: SequenceValues, sql: &str) -> (Verdict, SequenceValues) {
        let mut v = values;
        let fx = effects::of(sql.as_bytes());
        let verdict = judge(
            &mut v,
            Message::Query(sql.as_bytes()),
            sql.as_bytes(),
            Some(&fx),
        );
        (verdict, v)
    }

    #[test]
    fn reads_run_only_on_the_clients_own_values() {
        use SequenceValues::{Foreign, Own};
        assert_eq!(judged(Own, "SELECT lastval()"), (Verdict::Pass, Own));
        assert_eq!(
            judged(Foreign, "SELECT lastval()"),
            (Verdict::Refuse, Foreign)
        );
        assert_eq!(
            judged(Foreign, "SELECT currval('s')"),
            (Verdict::Refuse, Foreign)
        );
        assert_eq!(judged(Foreign, "SELECT 1"), (Verdict::Pass, Foreign));
        assert_eq!(judged(Foreign, "SELECT nextval('s')"), (Verdict::Pass, Own));
        assert_eq!(
            judged(Foreign, "INSERT INTO t (x) VALUES (1); SELECT lastval()"),
            (Verdict::Pass, Own)
        );
        assert_eq!(
            judged(Foreign, "SELECT nextval('s'), currval('s')"),
            (Verdict::Pass, Own)
        );
        assert_eq!(
            judged(
                Foreign,
                "BEGIN; INSERT INTO t (x) VALUES (1); SELECT currval('s')"
            ),
            (Verdict::Pass, Own)
        );
        assert_eq!(
            judged(Foreign, "SELECT lastval(); INSERT INTO t (x) VALUES (1)"),
            (Verdict::Refuse, Foreign)
        );
        // A named Parse runs nothing: its Bind is judged.
        let sql = b"SELECT lastval()";
        let fx = effects::of(sql);
        let mut v = Foreign;
        let named = Message::Parse {
            name: b"s1",
            query: sql,
            definition: b"SELECT lastval()\0\0\0",
        };
        assert_eq!(judge(&mut v, named, sql, Some(&fx)), Verdict::Pass);
        let unnamed = Message::Parse {
            name: b"",
            query: sql,
            definition: b"SELECT lastval()\0\0\0",
        };
        assert_eq!(judge(&mut v, unnamed, sql, Some(&fx)), Verdict::Refuse);
    }
}
