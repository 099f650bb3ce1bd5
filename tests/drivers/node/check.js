// node-postgres through pgsluice (transaction mode, replicas, more clients than servers):
// its own Pool, named queries, transactions, and the session state that must follow the
// client (SET, advisory locks, LISTEN/NOTIFY). Exits non-zero on the first wrong answer;
// prints "ok" at the end.
'use strict';
const { Pool, Client } = require('pg');

const url = process.argv[2];
const CLIENTS = 20;
const ROUNDS = 25;

function check(cond, what) {
  if (!cond) {
    throw new Error(`node-postgres: ${what}`);
  }
}

async function withPool() {
  const pool = new Pool({ connectionString: url, max: CLIENTS });
  try {
    await Promise.all(
      [...Array(CLIENTS).keys()].map(async (i) => {
        for (let r = 0; r < ROUNDS; r++) {
          const key = i * 1000 + r;
          const read = await pool.query({ name: 'plus-one', text: 'SELECT $1::int + 1 AS n', values: [key] });
          check(read.rows[0].n === key + 1, `named query ${JSON.stringify(read.rows)}`);
          const c = await pool.connect();
          try {
            await c.query('BEGIN');
            await c.query({ name: 'insert', text: 'INSERT INTO drv_node (id, v) VALUES ($1, $2)', values: [key, `v${key}`] });
            const own = await c.query({ name: 'by-id', text: 'SELECT v FROM drv_node WHERE id = $1', values: [key] });
            check(own.rows[0].v === `v${key}`, `own insert ${JSON.stringify(own.rows)}`);
            await c.query('COMMIT');
          } finally {
            c.release();
          }
          // Through any connection of the Pool: read_your_writes = "pool" sees the commit.
          const later = await pool.query({ name: 'by-id', text: 'SELECT v FROM drv_node WHERE id = $1', values: [key] });
          check(later.rows.length === 1 && later.rows[0].v === `v${key}`, `committed insert ${JSON.stringify(later.rows)}`);
        }
      }),
    );
  } finally {
    await pool.end();
  }
}

async function sessionState() {
  const a = new Client({ connectionString: url });
  const b = new Client({ connectionString: url });
  await a.connect();
  await b.connect();
  try {
    await a.query('SET search_path TO tenant_node, public');
    for (let n = 0; n < 10; n++) {
      check((await a.query('SHOW search_path')).rows[0].search_path === 'tenant_node, public', 'own SET');
      check((await b.query('SHOW search_path')).rows[0].search_path === '"$user", public', 'leaked SET');
    }
    await a.query('SELECT pg_advisory_lock(4444)');
    for (let n = 0; n < 5; n++) {
      await a.query('BEGIN');
      await a.query('SELECT $1::int', [n]);
      await a.query('COMMIT');
    }
    check((await b.query('SELECT pg_try_advisory_lock(4444) AS ok')).rows[0].ok === false, 'lock held');
    check((await a.query('SELECT pg_advisory_unlock(4444) AS ok')).rows[0].ok === true, 'unlock');
    const got = new Promise((resolve, reject) => {
      a.on('notification', (m) => resolve(m.payload));
      setTimeout(() => reject(new Error('node-postgres: no notification in 5 s')), 5000).unref();
    });
    await a.query('LISTEN drv_node');
    await b.query("NOTIFY drv_node, 'hello'");
    check((await got) === 'hello', 'notification');
  } finally {
    await a.end();
    await b.end();
  }
}

(async () => {
  await withPool();
  await sessionState();
  console.log('ok');
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
