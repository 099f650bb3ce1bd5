//! SQL text → what it is, for routing: a read a replica may serve, a write (and why) that
//! needs the primary, transaction control, or session state.
//!
//! This is the keyword path: a tokenizer that understands PostgreSQL's quoting, and rules over
//! the tokens. Anything it cannot read, and anything it does not know to be a read, is a write:
//! a write sent to a replica fails, a read sent to the primary only costs capacity.
//!
//! Why no SQL parser behind it: a general parser (sqlparser, measured at ~6 µs a statement)
//! would only be asked about statements this path already sends to the primary, and it
//! rejects PostgreSQL syntax this path reads (FOR NO KEY UPDATE, FOR KEY SHARE, DO), which
//! would then go to the primary as well. What neither can know, whether a user-defined function
//! writes, comes from the catalog and `write_functions` (`functions.rs`). A prepared statement's
//! class is worked out once and kept with the statement for its later Binds.

pub use super::functions::WriteFunctions;
use super::lexer::{tokens, unquoted, Token};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Safe on a replica: SELECT / VALUES / TABLE / SHOW / plain EXPLAIN with nothing that
    /// writes or locks.
    Read,
    Write(WriteReason),
    /// BEGIN / START TRANSACTION; `read_only` when it asks for READ ONLY without SERIALIZABLE.
    Begin {
        read_only: bool,
    },
    /// SET TRANSACTION / SET SESSION CHARACTERISTICS AS TRANSACTION.
    SetTransaction {
        read_only: bool,
    },
    /// COMMIT, END, ROLLBACK, ABORT (and PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED).
    EndTransaction,
    /// SAVEPOINT, RELEASE, ROLLBACK TO: inside a transaction, which stays where it is.
    Savepoint,
    /// SET, RESET, DISCARD, LISTEN, PREPARE, DEALLOCATE and the like: session state.
    Session,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteReason {
    /// A statement that changes data or schema, or one not known to be a read.
    Statement,
    /// SELECT … FOR UPDATE / FOR NO KEY UPDATE / FOR SHARE / FOR KEY SHARE.
    Locking,
    /// A call of a function known to write (nextval, pg_advisory_lock, …).
    WriteFunction,
    /// A view of one server's own state (pg_stat_activity, pg_prepared_xacts, pg_locks, …):
    /// a client asks about the server it thinks it is connected to, the primary. And a
    /// sequence's values, which only the primary has right.
    ServerState,
    /// Text the classifier cannot tokenize.
    Unreadable,
}

/// The word at `i`, if a word is there.
pub(super) fn word(t: &[Token], i: usize) -> Option<&str> {
    match t.get(i) {
        Some(Token::Word(w)) => Some(w),
        _ => None,
    }
}

/// Whether the two words follow each other somewhere in `t`.
pub(super) fn has_words(t: &[Token], pair: [&str; 2]) -> bool {
    t.windows(2).any(|w| matches!((&w[0], &w[1]), (Token::Word(a), Token::Word(b)) if a == pair[0] && b == pair[1]))
}

/// Classifies a whole query string; `write_functions` extends the built-in list.
pub fn classify(sql: &str, write_functions: &WriteFunctions) -> Class {
    analyze(sql, write_functions).0
}

/// A routing hint given in a comment: `/* pgsluice: primary */` or `/* pgsluice: replica */`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    Primary,
    Replica,
}

/// Classifies a query string and finds the first routing hint in its comments.
pub fn analyze(sql: &str, write_functions: &WriteFunctions) -> (Class, Option<Hint>) {
    let Ok(mut toks) = tokens(sql) else {
        return (Class::Write(WriteReason::Unreadable), None);
    };
    let mut hint = None;
    if toks.iter().any(|t| matches!(t, Token::Hint(_))) {
        hint = toks.iter().find_map(|t| match t {
            Token::Hint(h) if h == "primary" => Some(Hint::Primary),
            Token::Hint(h) if h == "replica" => Some(Hint::Replica),
            _ => None,
        });
        toks.retain(|t| !matches!(t, Token::Hint(_)));
    }
    (statements(&toks, sql, write_functions), hint)
}

fn statements(toks: &[Token], sql: &str, write_functions: &WriteFunctions) -> Class {
    let mut statements = toks
        .split(|t| *t == Token::Punct(';'))
        .filter(|s| !s.is_empty());
    let Some(first) = statements.next() else {
        return Class::Read; // an empty query reaches no data
    };
    let class = statement(first, sql, write_functions);
    let mut rest = statements.peekable();
    if rest.peek().is_none() {
        return class;
    }
    // Several statements: a read only if every one of them is.
    std::iter::once(class)
        .chain(rest.map(|s| statement(s, sql, write_functions)))
        .find(|c| *c != Class::Read)
        .map_or(Class::Read, |c| match c {
            Class::Write(r) => Class::Write(r),
            _ => Class::Write(WriteReason::Statement),
        })
}

fn statement(t: &[Token], sql: &str, write_functions: &WriteFunctions) -> Class {
    // A parenthesised query: look at what starts it.
    let start = t
        .iter()
        .position(|x| *x != Token::Punct('('))
        .unwrap_or(t.len());
    let Some(first) = word(t, start) else {
        return Class::Write(WriteReason::Statement);
    };
    match first {
        "select" | "values" | "table" | "with" => query(t, sql, write_functions),
        "show" => Class::Read,
        "explain" => explain(&t[start + 1..], sql, write_functions),
        "begin" | "start" => Class::Begin {
            read_only: read_only(t),
        },
        "set" => match (word(t, start + 1), word(t, start + 2)) {
            (Some("transaction"), _) | (Some("session"), Some("characteristics")) => {
                Class::SetTransaction {
                    read_only: read_only(t),
                }
            }
            _ => Class::Session,
        },
        "commit" | "end" | "abort" => Class::EndTransaction,
        "rollback" => match word(t, start + 1) {
            Some("to") => Class::Savepoint,
            Some("prepared") => Class::EndTransaction,
            _ if has_words(t, ["to", "savepoint"]) => Class::Savepoint,
            _ => Class::EndTransaction,
        },
        "savepoint" | "release" => Class::Savepoint,
        "prepare" if word(t, start + 1) == Some("transaction") => Class::EndTransaction,
        "reset" | "discard" | "listen" | "unlisten" | "deallocate" | "prepare" | "load" => {
            Class::Session
        }
        _ => Class::Write(WriteReason::Statement),
    }
}

fn read_only(t: &[Token]) -> bool {
    has_words(t, ["read", "only"]) && !t.iter().any(|x| *x == Token::Word("serializable".into()))
}

/// SELECT / VALUES / TABLE / WITH: a read unless something in it writes or locks, or reads
/// what only the primary has.
fn query(t: &[Token], sql: &str, write_functions: &WriteFunctions) -> Class {
    for (i, tok) in t.iter().enumerate() {
        let w = match tok {
            Token::Word(w) => w,
            // Quoted, the name is exact: never a keyword, but still a function.
            Token::QuotedCall(name) if write_functions.contains(name) => {
                return Class::Write(WriteReason::WriteFunction);
            }
            Token::QuotedIdent(from, to) if may_name_relation(t, i) => {
                let name = unquoted(sql.get(*from as usize..*to as usize).unwrap_or_default());
                if write_functions.is_sequence(&name) {
                    return Class::Write(WriteReason::ServerState);
                }
                continue;
            }
            _ => continue,
        };
        match w.as_str() {
            "for" if matches!(word(t, i + 1), Some("update" | "share" | "no" | "key")) => {
                return Class::Write(WriteReason::Locking);
            }
            // SELECT … INTO makes a table; in a CTE INSERT INTO is caught below anyway.
            "into" | "insert" | "update" | "delete" | "merge" | "truncate" => {
                return Class::Write(WriteReason::Statement);
            }
            name if t.get(i + 1) == Some(&Token::Punct('(')) && write_functions.contains(name) => {
                return Class::Write(WriteReason::WriteFunction);
            }
            name if server_state(name) => return Class::Write(WriteReason::ServerState),
            name if may_name_relation(t, i) && write_functions.is_sequence(name) => {
                return Class::Write(WriteReason::ServerState);
            }
            _ => {}
        }
    }
    Class::Read
}

/// Whether the name at `i` may be a relation read: it follows FROM, JOIN, TABLE, a comma or
/// a schema's dot. (A column so named, after a comma or a dot, only costs a look.)
fn may_name_relation(t: &[Token], i: usize) -> bool {
    match i.checked_sub(1).and_then(|p| t.get(p)) {
        Some(Token::Word(w)) => matches!(w.as_str(), "from" | "join" | "table"),
        Some(Token::Punct(',' | '.')) => true,
        _ => false,
    }
}

/// Views whose rows are one server's own (its backends, statistics, prepared transactions,
/// locks, replication): on a replica they describe the replica. So do sequences' values: a
/// replica has what the primary logged, up to 32 values ahead of what it has given out (the
/// sequences themselves, read as relations, are the catalog's: `WriteFunctions::is_sequence`).
fn server_state(name: &str) -> bool {
    name.starts_with("pg_")
        && (name.starts_with("pg_stat_")
            || name.starts_with("pg_statio_")
            || matches!(
                name,
                "pg_prepared_xacts"
                    | "pg_locks"
                    | "pg_replication_slots"
                    | "pg_replication_origin_status"
                    | "pg_backend_memory_contexts"
                    | "pg_sequences"
                    | "pg_sequence_last_value"
            ))
}

/// EXPLAIN runs its statement only with ANALYZE: then it is what that statement is.
fn explain(t: &[Token], sql: &str, write_functions: &WriteFunctions) -> Class {
    let mut i = 0;
    let mut analyze = false;
    if t.first() == Some(&Token::Punct('(')) {
        let close = t
            .iter()
            .position(|x| *x == Token::Punct(')'))
            .unwrap_or(t.len());
        analyze = t[..close]
            .iter()
            .any(|x| matches!(x, Token::Word(w) if w == "analyze" || w == "analyse"));
        i = close + 1;
    } else {
        while let Some(w @ ("analyze" | "analyse" | "verbose")) = word(t, i) {
            analyze |= w != "verbose";
            i += 1;
        }
    }
    let inner = t.get(i..).unwrap_or(&[]);
    match statement(inner, sql, write_functions) {
        Class::Read => Class::Read,
        Class::Write(r) if analyze => Class::Write(r),
        _ if analyze => Class::Write(WriteReason::Statement),
        _ => Class::Read,
    }
}

#[cfg(test)]
mod tests {
    use super::Class::*;
    use super::WriteReason::*;
    use super::*;

    const W: Class = Write(Statement);
    const LOCK: Class = Write(Locking);
    const FUNC: Class = Write(WriteFunction);

    /// Real-world statements (ORMs, drivers, psql, migrations) and what they are.
    const CASES: &[(&str, Class)] = &[
        ("SELECT 1", Read),
        ("select * from users where id = $1", Read),
        ("SELECT \"users\".* FROM \"users\" WHERE \"users\".\"id\" = $1 LIMIT $2", Read),
        ("SELECT users.id AS users_id, users.name AS users_name FROM users WHERE users.id = %(param_1)s", Read),
        ("SELECT COUNT(*) FROM orders WHERE created_at > now() - interval '1 day'", Read),
        ("SELECT data->>'name', data#>'{a,b}' FROM docs WHERE data @> '{\"k\": 1}'::jsonb", Read),
        ("SELECT id::text, price::numeric(10,2) FROM items", Read),
        ("SELECT * FROM t WHERE name ILIKE 'update%'", Read),
        ("SELECT 'DELETE FROM users' AS q", Read),
        ("SELECT $$INSERT INTO x$$", Read),
        ("SELECT 1 -- ; DELETE FROM t", Read),
        ("SELECT /* UPDATE t SET a = 1 */ 1", Read),
        ("select \"update\", \"delete\" from \"insert\"", Read),
        ("SELECT a FROM t1 JOIN t2 USING (id) WHERE t2.b IN (SELECT b FROM t3)", Read),
        ("SELECT * FROM t ORDER BY id DESC LIMIT 10 OFFSET 20", Read),
        ("SELECT DISTINCT ON (a) a, b FROM t ORDER BY a, b", Read),
        ("SELECT a, count(*) FROM t GROUP BY a HAVING count(*) > 1", Read),
        ("SELECT row_number() OVER (PARTITION BY a ORDER BY b) FROM t", Read),
        ("SELECT generate_series(1, 10)", Read),
        ("SELECT now(), current_user, version()", Read),
        ("SELECT pg_is_in_recovery()", Read),
        ("SELECT inet_server_port()", Read),
        ("SELECT pg_last_wal_replay_lsn()", Read),
        ("SELECT * FROM pg_stat_activity", Write(ServerState)),
        ("SELECT last_value FROM pg_sequences", Write(ServerState)),
        ("SELECT pg_sequence_last_value('s')", Write(ServerState)),
        ("SELECT EXISTS(SELECT 1 FROM t WHERE a = $1)", Read),
        ("SELECT CASE WHEN a > 0 THEN 'pos' ELSE 'neg' END FROM t", Read),
        ("SELECT a FROM t UNION ALL SELECT b FROM u", Read),
        ("SELECT * FROM t WHERE a = ANY($1::int[])", Read),
        ("(SELECT 1) UNION (SELECT 2)", Read),
        ("VALUES (1, 'a'), (2, 'b')", Read),
        ("TABLE users", Read),
        ("SHOW search_path", Read),
        ("SHOW transaction_isolation", Read),
        ("WITH recent AS (SELECT * FROM orders WHERE ts > now() - interval '1h') SELECT count(*) FROM recent", Read),
        ("WITH RECURSIVE r(n) AS (VALUES (1) UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT * FROM r", Read),
        ("EXPLAIN SELECT * FROM t", Read),
        ("EXPLAIN (FORMAT JSON) SELECT * FROM t", Read),
        ("EXPLAIN ANALYZE SELECT * FROM t", Read),
        ("EXPLAIN DELETE FROM t", Read),
        ("EXPLAIN ANALYZE DELETE FROM t", W),
        ("EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1", W),
        ("explain analyse insert into t values (1)", W),
        ("SELECT 1; SELECT 2", Read),
        ("SELECT 1;", Read),
        ("", Read),
        ("SELECT \"nextval\"('s')", FUNC),
        ("SELECT currval('seq')", FUNC),
        ("SELECT lastval()", FUNC),
        ("SELECT public.\"pg_advisory_lock\" (1)", FUNC),
        ("SELECT \"NEXTVAL\"('s'), \"my table\".\"update\" FROM \"my table\"", Read),
        ("SELECT * FROM t FOR UPDATE", LOCK),
        ("SELECT * FROM t WHERE id = 1 FOR UPDATE SKIP LOCKED", LOCK),
        ("SELECT * FROM t FOR NO KEY UPDATE", LOCK),
        ("SELECT * FROM t FOR SHARE", LOCK),
        ("SELECT * FROM t FOR KEY SHARE NOWAIT", LOCK),
        ("SELECT * FROM jobs WHERE state = 'ready' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED", LOCK),
        ("SELECT nextval('orders_id_seq')", FUNC),
        ("SELECT setval('s', 42)", FUNC),
        ("select pg_catalog.nextval('s')", FUNC),
        ("SELECT pg_advisory_lock(1)", FUNC),
        ("SELECT pg_advisory_xact_lock(hashtext('k'))", FUNC),
        ("SELECT pg_try_advisory_lock(7)", FUNC),
        ("SELECT set_config('search_path', 'x', false)", FUNC),
        ("SELECT pg_notify('chan', 'payload')", FUNC),
        ("SELECT lo_import('/tmp/f')", FUNC),
        ("SELECT dblink_exec('conn', 'DELETE FROM t')", FUNC),
        ("SELECT txid_current()", FUNC),
        ("SELECT brin_summarize_range('idx', 0)", FUNC),
        ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'x'", FUNC),
        ("SELECT pg_current_wal_lsn()", FUNC),
        ("SELECT gid FROM pg_prepared_xacts", Write(ServerState)),
        ("select count(*) from pg_catalog.pg_stat_activity", Write(ServerState)),
        ("SELECT count(*) = 0 AS ok FROM pg_stat_wal_receiver", Write(ServerState)),
        ("SELECT * FROM pg_statio_user_tables", Write(ServerState)),
        ("SELECT locktype FROM pg_locks", Write(ServerState)),
        ("SELECT * FROM pg_stats WHERE tablename = 't'", Read),
        ("SELECT * FROM pg_statistic_ext", Read),
        ("SELECT * INTO new_table FROM t", W),
        ("WITH moved AS (DELETE FROM a RETURNING *) INSERT INTO b SELECT * FROM moved", W),
        ("WITH u AS (UPDATE t SET a = 1 RETURNING id) SELECT * FROM u", W),
        ("WITH i AS (INSERT INTO t VALUES (1) RETURNING id) SELECT id FROM i", W),
        ("INSERT INTO users (name) VALUES ($1) RETURNING id", W),
        ("INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v", W),
        ("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING", W),
        ("UPDATE users SET name = $1 WHERE id = $2", W),
        ("DELETE FROM sessions WHERE expires < now()", W),
        ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v", W),
        ("TRUNCATE t", W),
        ("COPY t FROM STDIN", W),
        ("COPY (SELECT * FROM t) TO STDOUT", W),
        ("CREATE TABLE t (id int PRIMARY KEY)", W),
        ("CREATE INDEX CONCURRENTLY i ON t (a)", W),
        ("ALTER TABLE t ADD COLUMN b text", W),
        ("DROP TABLE IF EXISTS t", W),
        ("DO $$ BEGIN PERFORM 1; END $$", W),
        ("CALL my_procedure(1)", W),
        ("VACUUM ANALYZE t", W),
        ("ANALYZE t", W),
        ("REFRESH MATERIALIZED VIEW mv", W),
        ("GRANT SELECT ON t TO r", W),
        ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", W),
        ("CLUSTER t", W),
        ("REINDEX TABLE t", W),
        ("CHECKPOINT", W),
        ("NOTIFY chan, 'x'", W),
        ("EXECUTE my_plan(1)", W),
        ("FETCH 10 FROM c", W),
        ("DECLARE c CURSOR FOR SELECT 1", W),
        ("SELECT 1; DELETE FROM t", W),
        ("SELECT 1; SELECT nextval('s')", FUNC),
        ("SELECT 1; BEGIN", W),
        ("SELECT 'unterminated", Write(Unreadable)),
        ("SELECT $tag$never closed", Write(Unreadable)),
        ("BEGIN", Begin { read_only: false }),
        ("BEGIN READ ONLY", Begin { read_only: true }),
        ("begin transaction read only", Begin { read_only: true }),
        ("START TRANSACTION READ ONLY", Begin { read_only: true }),
        ("START TRANSACTION ISOLATION LEVEL REPEATABLE READ", Begin { read_only: false }),
        ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE", Begin { read_only: false }),
        ("BEGIN READ WRITE", Begin { read_only: false }),
        ("SET TRANSACTION READ ONLY", SetTransaction { read_only: true }),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", SetTransaction { read_only: false }),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", SetTransaction { read_only: true }),
        ("COMMIT", EndTransaction),
        ("END", EndTransaction),
        ("ROLLBACK", EndTransaction),
        ("ABORT", EndTransaction),
        ("PREPARE TRANSACTION 'x'", EndTransaction),
        ("COMMIT PREPARED 'x'", EndTransaction),
        ("ROLLBACK TO SAVEPOINT s1", Savepoint),
        ("ROLLBACK TO s1", Savepoint),
        ("SAVEPOINT s1", Savepoint),
        ("RELEASE SAVEPOINT s1", Savepoint),
        ("SET search_path TO app, public", Session),
        ("SET LOCAL statement_timeout = '5s'", Session),
        ("SET application_name = 'web'", Session),
        ("RESET ALL", Session),
        ("DISCARD ALL", Session),
        ("LISTEN chan", Session),
        ("UNLISTEN *", Session),
        ("PREPARE p AS SELECT 1", Session),
        ("DEALLOCATE ALL", Session),
    ];

    #[test]
    fn classifies_real_world_statements() {
        assert!(CASES.len() >= 100, "{} cases", CASES.len());
        for (sql, want) in CASES {
            assert_eq!(classify(sql, &WriteFunctions::default()), *want, "{sql}");
        }
    }

    #[test]
    fn configured_write_functions_count() {
        let extra = WriteFunctions::new(["audit_log"]);
        assert_eq!(classify("SELECT audit_log('x')", &extra), FUNC);
        assert_eq!(classify("SELECT AUDIT_LOG('x')", &extra), FUNC);
        assert_eq!(classify("SELECT audit_log_count()", &extra), Read);
    }

    #[test]
    fn reads_of_the_catalogs_sequences_are_the_primarys() {
        let known = WriteFunctions::default().with_sequences(["orders_id_seq", "Mixed\"Seq"]);
        let state = Write(ServerState);
        for sql in [
            "SELECT last_value FROM orders_id_seq",
            "select last_value, is_called from public.orders_id_seq",
            "SELECT * FROM t, Orders_Id_Seq",
            "SELECT s.last_value FROM t JOIN orders_id_seq s ON true",
            "TABLE orders_id_seq",
            "SELECT last_value FROM \"public\".\"orders_id_seq\"",
            "SELECT last_value FROM \"Mixed\"\"Seq\"",
            "EXPLAIN ANALYZE SELECT * FROM orders_id_seq",
        ] {
            assert_eq!(classify(sql, &known), state, "{sql}");
        }
        for sql in [
            "SELECT last_value FROM orders",
            "SELECT 'orders_id_seq' FROM t",
            "SELECT last_value FROM \"Orders_Id_Seq\"",
            "SELECT orders_id_seq FROM t",
            "SELECT last_value FROM \"mixed\"\"seq\"",
        ] {
            assert_eq!(classify(sql, &known), Read, "{sql}");
        }
        let none = WriteFunctions::default();
        assert_eq!(
            classify("SELECT last_value FROM orders_id_seq", &none),
            Read
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(sql in "\\PC{0,80}") {
            let _ = classify(&sql, &WriteFunctions::default());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120)) {
            let _ = classify(&String::from_utf8_lossy(&bytes), &WriteFunctions::default());
        }

        /// A writing keyword inside a string literal, quoted identifier, dollar quote or
        /// comment never makes a read into a write.
        #[test]
        fn quoted_keywords_do_not_change_the_class(
            keyword in proptest::sample::select(vec!["INSERT", "UPDATE", "DELETE", "FOR UPDATE", "INTO", "nextval(", ";", "DROP", "MERGE"]),
            wrap in 0usize..6,
        ) {
            let hidden = match wrap {
                0 => format!("'{keyword}'"),
                1 => format!("\"{}\"", keyword.replace('"', "")),
                2 => format!("$$ {keyword} $$"),
                3 => format!("$q$ {keyword} $q$"),
                4 => format!("1 /* {keyword} */"),
                _ => format!("1 -- {keyword}\n"),
            };
            let sql = format!("SELECT {hidden} AS x FROM t");
            proptest::prop_assert_eq!(classify(&sql, &WriteFunctions::default()), Read, "{}", sql);
        }
    }
}
