"""psycopg 3 through pgsluice (transaction mode, replicas, more clients than servers):
autocommit, transactions, prepare_threshold=0, pipeline mode, COPY, and the session state
that must follow the client (SET, advisory locks, LISTEN/NOTIFY). Exits non-zero on the
first wrong answer; prints "ok" at the end."""

import sys
import threading
import time

import psycopg

DSN = sys.argv[1]
CLIENTS, ROUNDS = 12, 20


def check(cond, what):
    if not cond:
        raise SystemExit(f"psycopg: {what}")


def worker(i, errors):
    try:
        with psycopg.connect(DSN, autocommit=True) as ac, psycopg.connect(DSN) as tx, psycopg.connect(
            DSN, autocommit=True, prepare_threshold=0
        ) as prep:
            for r in range(ROUNDS):
                key = i * 1000 + r
                row = ac.execute("SELECT %s::int + 1", (key,)).fetchone()
                check(row == (key + 1,), f"autocommit read {row}")
                with tx.transaction():
                    tx.execute("INSERT INTO drv_psycopg (id, v) VALUES (%s, %s)", (key, f"v{key}"))
                    got = tx.execute("SELECT v FROM drv_psycopg WHERE id = %s", (key,)).fetchone()
                    check(got == (f"v{key}",), f"read own insert {got}")
                # Another connection of the same user (read_your_writes = "pool"), prepared.
                got = prep.execute("SELECT v FROM drv_psycopg WHERE id = %s", (key,)).fetchone()
                check(got == (f"v{key}",), f"committed insert from another connection {got}")
                got = prep.execute("SELECT count(*) FROM generate_series(1, %s)", (r + 1,)).fetchone()
                check(got == (r + 1,), f"prepared {got}")
    except BaseException as e:  # noqa: BLE001 - reported to the main thread
        errors.append(f"client {i}: {e!r}")


def pipeline_and_copy():
    with psycopg.connect(DSN, autocommit=True) as c:
        with c.pipeline():
            curs = [c.execute("SELECT %s::int * 2", (n,)) for n in range(20)]
        check([cur.fetchone()[0] for cur in curs] == [n * 2 for n in range(20)], "pipeline")
        with c.cursor() as cur:
            with cur.copy("COPY drv_psycopg (id, v) FROM STDIN") as copy:
                for n in range(100):
                    copy.write_row((900000 + n, f"copied {n}"))
            rows = []
            with cur.copy("COPY (SELECT id, v FROM drv_psycopg WHERE id >= 900000 ORDER BY id) TO STDOUT") as copy:
                for row in copy.rows():
                    rows.append(row)
            check(len(rows) == 100 and rows[5] == ("900005", "copied 5"), f"copy {rows[:2]}")


def session_state():
    with psycopg.connect(DSN, autocommit=True) as a, psycopg.connect(DSN, autocommit=True) as b:
        a.execute("SET search_path TO tenant_psycopg, public")
        a.execute("SET statement_timeout = '7s'")
        for _ in range(10):
            check(a.execute("SHOW search_path").fetchone() == ("tenant_psycopg, public",), "own SET")
            check(a.execute("SHOW statement_timeout").fetchone() == ("7s",), "own timeout")
            check(b.execute("SHOW search_path").fetchone() == ('"$user", public',), "leaked SET")
        check(a.execute("SELECT pg_advisory_lock(4242)").fetchone() is not None, "lock")
        for n in range(5):
            with a.transaction():
                a.execute("SELECT %s", (n,))
        check(b.execute("SELECT pg_try_advisory_lock(4242)").fetchone() == (False,), "lock held")
        check(a.execute("SELECT pg_advisory_unlock(4242)").fetchone() == (True,), "unlock")
        a.execute("LISTEN drv_psycopg")
        b.execute("NOTIFY drv_psycopg, 'hello'")
        got = [n.payload for n in a.notifies(timeout=5, stop_after=1)]
        check(got == ["hello"], f"notification {got}")


def main():
    errors = []
    threads = [threading.Thread(target=worker, args=(i, errors)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    check(not errors, "; ".join(errors))
    check(not any(t.is_alive() for t in threads), "a client hung")
    pipeline_and_copy()
    session_state()
    print("ok")


if __name__ == "__main__":
    start = time.monotonic()
    main()
    print(f"psycopg: {time.monotonic() - start:.1f} s", file=sys.stderr)
