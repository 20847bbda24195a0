'use strict';
// Unit tests of the /bbs contract on an in-memory SQLite database, through
// a real HTTP server on a loopback port. Run: node --test apps/board-service/test/

const test = require('node:test');
const assert = require('node:assert');
const { createApp } = require('../lib/app');
const db = require('../lib/db');
const { load, redact, parseDatabaseUrl } = require('../lib/config');

/** Closes a server now, keep-alive connections of `fetch` included. */
function closeServer(server) {
  return new Promise((resolve) => {
    server.close(resolve);
    server.closeAllConnections();
  });
}

async function start() {
  const database = db.open({ kind: 'sqlite', file: ':memory:' });
  await database.migrate();
  const app = createApp({ db: database, hostname: 'board-test', accessLog: false, state: { ready: true } });
  const server = await new Promise((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
  });
  const base = `http://127.0.0.1:${server.address().port}`;
  const call = async (method, path, body) => {
    const res = await fetch(base + path, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : null };
  };
  return { call, close: () => closeServer(server).then(() => database.close()) };
}

test('articles are written, listed newest first, paged, liked and deleted', async () => {
  const s = await start();
  try {
    for (let i = 1; i <= 12; i++) {
      const r = await s.call('POST', '/bbs/', { id: i % 2 ? 'alice' : 'bob', title: `t${i}`, content: `c${i}` });
      assert.strictEqual(r.status, 201);
      assert.deepStrictEqual(Object.keys(r.body), ['article_id', 'id', 'title', 'content', 'likeit']);
    }
    const latest = await s.call('GET', '/bbs/latest/');
    assert.strictEqual(latest.status, 200);
    assert.strictEqual(latest.body.length, 10);
    assert.strictEqual(latest.body[0].title, 't12');
    const older = await s.call('GET', `/bbs/previous/${latest.body[9].article_id}`);
    assert.deepStrictEqual(older.body.map((a) => a.title), ['t2', 't1']);
    const alice = await s.call('GET', '/bbs/user/alice');
    assert.strictEqual(alice.body.length, 6);
    assert.ok(alice.body.every((a) => a.id === 'alice'));
    const id = latest.body[0].article_id;
    assert.strictEqual((await s.call('PUT', `/bbs/${id}`)).body.likeit, 1);
    assert.strictEqual((await s.call('PUT', `/bbs/${id}`)).body.likeit, 2);
    assert.strictEqual((await s.call('DELETE', `/bbs/${id}`)).status, 204);
    assert.strictEqual((await s.call('DELETE', `/bbs/${id}`)).status, 404);
    assert.strictEqual((await s.call('PUT', `/bbs/${id}`)).status, 404);
  } finally {
    await s.close();
  }
});

test('bad requests get a 400 in the Spring shape naming each field, and nothing is written', async () => {
  const s = await start();
  try {
    const r = await s.call('POST', '/bbs/', { id: 'x'.repeat(21), title: '', content: 'ok' });
    assert.strictEqual(r.status, 400);
    assert.deepStrictEqual(Object.keys(r.body), ['timestamp', 'status', 'error', 'message', 'path', 'errors']);
    assert.strictEqual(r.body.error, 'Bad Request');
    assert.strictEqual(r.body.path, '/bbs/');
    assert.deepStrictEqual(r.body.errors.map((e) => e.field), ['id', 'title']);
    assert.match(r.body.errors[0].message, /at most 20 characters \(got 21\)/);
    const missing = await s.call('POST', '/bbs/', { id: 'a' });
    assert.deepStrictEqual(missing.body.errors.map((e) => e.field), ['title', 'content']);
    const broken = await s.call('POST', '/bbs/', '{"id":');
    assert.strictEqual(broken.status, 400);
    assert.strictEqual(broken.body.errors[0].field, 'body');
    const array = await s.call('POST', '/bbs/', '[1]');
    assert.strictEqual(array.status, 400);
    const big = await s.call('POST', '/bbs/', { id: 'a', title: 't', content: 'x'.repeat(70000) });
    assert.strictEqual(big.status, 413);
    assert.strictEqual((await s.call('GET', '/bbs/previous/abc')).status, 400);
    assert.strictEqual((await s.call('GET', '/bbs/previous/99999999999')).status, 400);
    assert.strictEqual((await s.call('GET', `/bbs/user/${'u'.repeat(21)}`)).status, 400);
    assert.strictEqual((await s.call('GET', '/bbs/latest/')).body.length, 0, 'nothing written');
    const unknown = await s.call('GET', '/nope');
    assert.strictEqual(unknown.status, 404);
    assert.strictEqual(unknown.body.path, '/nope');
  } finally {
    await s.close();
  }
});

test('health is UP with a database, DOWN (503) without one', async () => {
  const s = await start();
  try {
    const r = await s.call('GET', '/bbs/health');
    assert.deepStrictEqual([r.status, r.body], [200, { status: 'UP' }]);
  } finally {
    await s.close();
  }
  const database = db.open({ kind: 'mysql', host: '127.0.0.1', port: 1, user: 'u', password: 'p', database: 'd' });
  const app = createApp({ db: database, hostname: 'h', accessLog: false, state: { ready: true } });
  const server = await new Promise((resolve) => {
    const srv = app.listen(0, '127.0.0.1', () => resolve(srv));
  });
  try {
    const base = `http://127.0.0.1:${server.address().port}`;
    const health = await fetch(`${base}/bbs/health`);
    assert.strictEqual(health.status, 503);
    assert.deepStrictEqual(await health.json(), { status: 'DOWN' });
    const latest = await fetch(`${base}/bbs/latest/`);
    assert.strictEqual(latest.status, 503);
    assert.match((await latest.json()).message, /not reachable/);
  } finally {
    await closeServer(server);
    await database.close();
  }
});

test('configuration errors name the variable and what is accepted, never the password', () => {
  assert.deepStrictEqual(load({}).database, { kind: 'sqlite', file: 'data/board.db' });
  assert.strictEqual(load({ PORT: '3001' }).port, 3001);
  assert.throws(() => load({ PORT: '70000' }), /PORT="70000".*TCP port/);
  assert.throws(() => load({ DATABASE_URL: 'oracle://scott:tiger@h/db' }), (e) => /DATABASE_URL/.test(e.message) && !/tiger/.test(e.message));
  assert.deepStrictEqual(parseDatabaseUrl('mysql://shoal:s%40cret@db:3306/shoal'), {
    kind: 'mysql', user: 'shoal', password: 's@cret', host: 'db', port: 3306, database: 'shoal',
  });
  assert.strictEqual(redact('mysql://u:p@h/d'), 'mysql://u:***@h/d');
});

test('WAL only with a SQLite that has the WAL-reset fix (3.51.3); a file of the rollback journal otherwise', async () => {
  assert.equal(db.walIsSafe('3.40.1'), false);
  assert.equal(db.walIsSafe('3.51.2'), false);
  assert.equal(db.walIsSafe('3.51.3'), true);
  assert.equal(db.walIsSafe('3.52.0'), true);
  assert.equal(db.walIsSafe('4.0.0'), true);
  const fs = require('fs');
  const os = require('os');
  const path = require('path');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'board-journal-'));
  const file = path.join(dir, 'board.db');
  const database = db.open({ kind: 'sqlite', file });
  await database.migrate();
  const [row] = await database.all('PRAGMA journal_mode', []);
  const wanted = db.walIsSafe(require('sqlite3').VERSION) ? 'wal' : 'delete';
  assert.equal(row.journal_mode, wanted);
  await database.run('INSERT INTO board (id, title, content) VALUES (?, ?, ?)', ['u', 't', 'c']);
  // A second process's connection (here: a second handle) sees the write.
  const other = db.open({ kind: 'sqlite', file });
  const rows = await other.all('SELECT id FROM board', []);
  assert.deepEqual(rows.map((r) => r.id), ['u']);
  await other.close();
  await database.close();
  fs.rmSync(dir, { recursive: true, force: true });
});
