//! What a unit of work is, for routing: built from the client's frames of one implicit
//! transaction (a Query, or extended-protocol messages up to Sync), as far as they have come.

use super::classify::{self, Class, Hint, WriteFunctions, WriteReason};
use super::functions::Catalog;
use crate::protocol::frontend::Message;

/// What the client wants run: the statements up to the end of its first implicit
/// transaction (a Query, or extended-protocol messages up to Sync).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Work {
    pub class: Class,
    pub hint: Option<Hint>,
    /// False when the work has not fully arrived (extended protocol before its Sync): what
    /// follows is unknown, so it cannot go to a replica.
    pub complete: bool,
}

/// What is not known to be a read.
const UNKNOWN: Class = Class::Write(WriteReason::Statement);

impl Work {
    /// The unit at the front of `frames`. `statement` gives the class of a named prepared
    /// statement the client made earlier (None if the client has no such name); `catalog`
    /// which functions and texts write.
    pub fn of<'a>(
        frames: impl Iterator<Item = Message<'a>>,
        statement: impl Fn(&[u8]) -> Option<(Class, Option<Hint>)>,
        catalog: &Catalog,
    ) -> Work {
        let write_functions = &*catalog.functions();
        let mut work: Option<Work> = None;
        let mut add = |class: Class, hint: Option<Hint>| {
            work = Some(match work {
                None => Work {
                    class,
                    hint,
                    complete: false,
                },
                Some(w) => w.and(class, hint),
            });
        };
        let mut complete = false;
        // Statements parsed earlier in this unit: already classified at their Parse.
        let mut parsed: Vec<&[u8]> = Vec::new();
        for msg in frames {
            match msg {
                Message::Query(sql) => {
                    let (class, hint) = text(sql, write_functions, catalog);
                    add(class, hint);
                    complete = true;
                    break;
                }
                Message::Parse { name, query, .. } => {
                    let (class, hint) = text(query, write_functions, catalog);
                    add(class, hint);
                    parsed.push(name);
                }
                Message::Bind {
                    statement: name, ..
                }
                | Message::Describe { kind: b'S', name } => {
                    // The unnamed statement only lives within a unit: it was classified at
                    // its Parse.
                    if !name.is_empty() && !parsed.contains(&name) {
                        let (class, hint) = statement(name).unwrap_or((UNKNOWN, None));
                        add(class, hint);
                    }
                }
                Message::Sync => {
                    complete = true;
                    break;
                }
                Message::Describe { .. }
                | Message::Execute { .. }
                | Message::Close { .. }
                | Message::Flush => {}
                _ => {
                    add(UNKNOWN, None);
                    break;
                }
            }
        }
        let mut work = work.unwrap_or(Work {
            class: UNKNOWN,
            hint: None,
            complete: false,
        });
        work.complete = complete;
        work
    }

    /// One more statement of the same unit: a read stays a read only if every statement is
    /// one; anything else keeps what its first statement made it.
    pub fn and(self, class: Class, hint: Option<Hint>) -> Work {
        let class = match (self.class, class) {
            (Class::Read, Class::Read) => Class::Read,
            (Class::Read, Class::Write(r)) => Class::Write(r),
            (Class::Read, _) => Class::Write(WriteReason::Statement),
            (first, _) => first,
        };
        Work {
            class,
            hint: self.hint.or(hint),
            complete: self.complete,
        }
    }
}

fn text(sql: &[u8], write_functions: &WriteFunctions, catalog: &Catalog) -> (Class, Option<Hint>) {
    // Keywords are ASCII: text in another encoding classifies the same after a lossy decode.
    let (class, hint) = classify::analyze(&String::from_utf8_lossy(sql), write_functions);
    if class == Class::Read && catalog.known_write(sql) {
        return (Class::Write(WriteReason::WriteFunction), hint);
    }
    (class, hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(sql: &str) -> Work {
        let (class, hint) = classify::analyze(sql, &WriteFunctions::default());
        Work {
            class,
            hint,
            complete: true,
        }
    }

    fn none(_: &[u8]) -> Option<(Class, Option<Hint>)> {
        None
    }

    #[test]
    fn a_unit_is_a_read_only_if_every_statement_is() {
        let w = query("SELECT 1");
        assert_eq!(w.and(Class::Read, None).class, Class::Read);
        assert_eq!(
            w.and(Class::Write(WriteReason::Locking), None).class,
            Class::Write(WriteReason::Locking)
        );
        assert_eq!(
            w.and(Class::Session, None).class,
            Class::Write(WriteReason::Statement)
        );
        let begin = query("BEGIN READ ONLY");
        assert_eq!(
            begin.and(Class::Write(WriteReason::Statement), None).class,
            begin.class
        );
        assert_eq!(
            w.and(Class::Read, Some(Hint::Primary)).hint,
            Some(Hint::Primary)
        );
    }

    #[test]
    fn an_extended_unit_is_complete_only_at_its_sync() {
        let parse = Message::Parse {
            name: b"",
            query: b"SELECT 1",
            definition: b"SELECT 1\0\0\0",
        };
        let bind = Message::Bind {
            portal: b"",
            statement: b"",
            params: b"",
        };
        let partial = Work::of([parse, bind].into_iter(), none, &Catalog::default());
        assert_eq!((partial.class, partial.complete), (Class::Read, false));
        let whole = Work::of(
            [parse, bind, Message::Sync].into_iter(),
            none,
            &Catalog::default(),
        );
        assert_eq!((whole.class, whole.complete), (Class::Read, true));
    }

    #[test]
    fn a_bind_of_a_named_statement_takes_the_class_it_was_prepared_with() {
        let bind = |statement| Message::Bind {
            portal: b"",
            statement,
            params: b"",
        };
        let known =
            |name: &[u8]| (name == b"w").then_some((Class::Write(WriteReason::Statement), None));
        let w = Work::of(
            [bind(b"w"), Message::Sync].into_iter(),
            known,
            &Catalog::default(),
        );
        assert_eq!(w.class, Class::Write(WriteReason::Statement));
        let unknown = Work::of(
            [bind(b"x"), Message::Sync].into_iter(),
            known,
            &Catalog::default(),
        );
        assert_eq!(unknown.class, UNKNOWN, "an unknown name is not a read");
        let copy = Work::of([Message::CopyData].into_iter(), known, &Catalog::default());
        assert_eq!((copy.class, copy.complete), (UNKNOWN, false));
    }
}
