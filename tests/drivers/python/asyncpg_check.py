"""asyncpg through pgsluice (transaction mode, replicas, more clients than servers): its
statement cache, fetch, executemany, transactions, COPY, timeouts that cancel, a statement
cached across DDL, and the session state that must follow the client (SET, advisory locks,
LISTEN). Exits non-zero on the first wrong answer; prints "ok" at the end."""

import asyncio
import sys
import time

import asyncpg

DSN = sys.argv[1]
CLIENTS, ROUNDS = 16, 25


def check(cond, what):
    if not cond:
        raise SystemExit(f"asyncpg: {what}")


async def worker(i):
    conn = await asyncpg.connect(DSN)
    try:
        for r in range(ROUNDS):
            key = i * 1000 + r
            got = await conn.fetchval("SELECT $1::int + 1", key)
            check(got == key + 1, f"fetchval {got}")
            async with conn.transaction():
                await conn.execute("INSERT INTO drv_asyncpg (id, v) VALUES ($1, $2)", key, f"v{key}")
                row = await conn.fetchrow("SELECT v FROM drv_asyncpg WHERE id = $1", key)
                check(row["v"] == f"v{key}", f"own insert {row}")
            rows = await conn.fetch("SELECT g FROM generate_series(1, $1) g", r + 1)
            check([x["g"] for x in rows] == list(range(1, r + 2)), "fetch")
        await conn.executemany(
            "INSERT INTO drv_asyncpg (id, v) VALUES ($1, $2)",
            [(500000 + i * 100 + n, f"many {n}") for n in range(20)],
        )
        # Outside a transaction: the read goes to a replica only once it has replayed the writes.
        count = await conn.fetchval(
            "SELECT count(*) FROM drv_asyncpg WHERE id >= $1 AND id < $2", 500000 + i * 100, 500000 + i * 100 + 20
        )
        check(count == 20, f"executemany {count}")
    finally:
        await conn.close()


async def copy_and_timeouts():
    conn = await asyncpg.connect(DSN)
    try:
        records = [(800000 + n, f"copied {n}") for n in range(100)]
        await conn.copy_records_to_table("drv_asyncpg", records=records, columns=["id", "v"])
        n = await conn.fetchval("SELECT count(*) FROM drv_asyncpg WHERE id >= 800000")
        check(n == 100, f"copy {n}")
        try:
            await conn.fetch("SELECT pg_sleep(5)", timeout=0.3)
            check(False, "timeout did not fire")
        except asyncio.TimeoutError:
            pass
        # The cancelled query left nothing behind: the connection goes on.
        check(await conn.fetchval("SELECT 41 + 1") == 42, "after timeout")
    finally:
        await conn.close()


async def ddl_under_the_cache():
    conn = await asyncpg.connect(DSN)
    other = await asyncpg.connect(DSN)
    try:
        # The ALTER comes from the other connection, whose writes this one's reads need not
        # wait for (read_your_writes = "connection"): both read on the primary. Whichever
        # server this one's cached statement meets next, it hears that its result changed
        # (0A000), and asyncpg prepares it again.
        for c in (conn, other):
            await c.execute("SET pgsluice.route TO primary")
        await conn.execute("CREATE TABLE drv_asyncpg_ddl (a int); INSERT INTO drv_asyncpg_ddl VALUES (1)")
        for _ in range(3):
            rows = await conn.fetch("SELECT * FROM drv_asyncpg_ddl")
            check(list(rows[0].keys()) == ["a"], "before")
        await other.execute("ALTER TABLE drv_asyncpg_ddl ADD COLUMN b int DEFAULT 2")
        for _ in range(3):
            rows = await conn.fetch("SELECT * FROM drv_asyncpg_ddl")
            check(list(rows[0].keys()) == ["a", "b"] and rows[0]["b"] == 2, f"after DDL {rows}")
            rows = await other.fetch("SELECT * FROM drv_asyncpg_ddl")
            check(list(rows[0].keys()) == ["a", "b"], "another client after DDL")
    finally:
        await conn.close()
        await other.close()


async def session_state():
    a = await asyncpg.connect(DSN)
    b = await asyncpg.connect(DSN)
    try:
        await a.execute("SET search_path TO tenant_asyncpg, public")
        for _ in range(10):
            check(await a.fetchval("SHOW search_path") == "tenant_asyncpg, public", "own SET")
            check(await b.fetchval("SHOW search_path") == '"$user", public', "leaked SET")
        await a.fetchval("SELECT pg_advisory_lock(4343)")
        for n in range(5):
            async with a.transaction():
                await a.fetchval("SELECT $1::int", n)
        check(await b.fetchval("SELECT pg_try_advisory_lock(4343)") is False, "lock held")
        check(await a.fetchval("SELECT pg_advisory_unlock(4343)") is True, "unlock")
        got = asyncio.get_running_loop().create_future()
        await a.add_listener("drv_asyncpg", lambda *args: got.done() or got.set_result(args[3]))
        await b.execute("NOTIFY drv_asyncpg, 'hello'")
        check(await asyncio.wait_for(got, 5) == "hello", "notification")
    finally:
        await a.close()
        await b.close()


async def main():
    await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(CLIENTS))), 120)
    await copy_and_timeouts()
    await ddl_under_the_cache()
    await session_state()
    print("ok")


if __name__ == "__main__":
    start = time.monotonic()
    asyncio.run(main())
    print(f"asyncpg: {time.monotonic() - start:.1f} s", file=sys.stderr)
