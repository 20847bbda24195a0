'use strict';
// The /bbs routes of the classic stack, with the Rust services' rules:
// validation names every bad field in a 400, errors are Spring's JSON
// ({"timestamp","status","error","message","path"}, plus "errors" for a
// 400), a database that cannot be reached is a 503 at once.
//
//   GET    /bbs/latest/                  the newest 10 articles, article_id descending
//   GET    /bbs/previous/{article_id}    the next 10 older than article_id
//   GET    /bbs/user/{id}                that user's articles, newest first
//   POST   /bbs/  {"id","title","content"}   201 and the article
//   PUT    /bbs/{article_id}             likeit + 1: 200 and the article
//   DELETE /bbs/{article_id}             204
//   GET    /bbs/health                   {"status":"UP"}, or 503 {"status":"DOWN"}
//   GET    /bbs/service/host             the host name (which replica answered)

const http = require('http');
const express = require('express');
const { Unavailable } = require('./db');

const LIMITS = { id: 20, title: 100, content: 2000 };
const COLUMNS = 'SELECT article_id, id, title, content, likeit FROM board';

class BadRequest extends Error {
  constructor(errors) {
    super(errors.map((e) => `${e.field}: ${e.message}`).join('; '));
    this.errors = errors;
  }
}

class NotFound extends Error {}

/** Spring's error body. */
function springError(status, message, path, errors) {
  const body = {
    timestamp: Date.now(),
    status,
    error: http.STATUS_CODES[status] || 'Error',
    message,
    path,
  };
  if (errors && errors.length > 0) body.errors = errors;
  return body;
}

/** A required text of at most `max` characters (characters, not bytes). */
function text(field, value, max, errors) {
  if (typeof value !== 'string') {
    errors.push({ field, message: value === undefined || value === null ? 'must not be empty' : 'must be a string' });
    return;
  }
  const n = [...value].length;
  if (value.trim() === '') errors.push({ field, message: 'must not be empty' });
  else if (n > max) errors.push({ field, message: `must be at most ${max} characters (got ${n})` });
}

function articleId(raw) {
  if (!/^[0-9]{1,10}$/.test(raw) || Number(raw) > 2147483647) {
    throw new BadRequest([{ field: 'article_id', message: `must be a whole number (got ${JSON.stringify(raw)})` }]);
  }
  return Number(raw);
}

function article(row) {
  return {
    article_id: Number(row.article_id),
    id: row.id,
    title: row.title,
    content: row.content,
    likeit: Number(row.likeit),
  };
}

/** Wraps an async handler so its errors reach the error middleware. */
const route = (handler) => (req, res, next) => Promise.resolve(handler(req, res)).catch(next);

/**
 * The Express app over `db`. `state.ready` is true once the table exists;
 * until then (database not reachable at start) requests get 503.
 */
function createApp({ db, hostname, accessLog, state }) {
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);

  if (accessLog) {
    app.use((req, res, next) => {
      const start = process.hrtime.bigint();
      res.on('finish', () => {
        const ms = Number(process.hrtime.bigint() - start) / 1e6;
        console.log(`${new Date().toISOString()} INFO request service=board-service method=${req.method} path=${req.path} status=${res.statusCode} latency_ms=${ms.toFixed(2)}`);
      });
      next();
    });
  }

  const requireReady = (req, res, next) => {
    if (!state.ready) next(new Unavailable('the database is not reachable yet; try again shortly'));
    else next();
  };

  app.get('/bbs/health', route(async (req, res) => {
    let up = state.ready;
    if (up) {
      try {
        await Promise.race([
          db.ping(),
          new Promise((_, reject) => setTimeout(() => reject(new Unavailable('ping timed out')), 2000).unref()),
        ]);
      } catch (err) {
        up = false;
      }
    }
    res.status(up ? 200 : 503).json({ status: up ? 'UP' : 'DOWN' });
  }));

  app.get('/bbs/service/host', (req, res) => res.type('text/plain').send(hostname));

  app.get(['/bbs/latest', '/bbs/latest/'], requireReady, route(async (req, res) => {
    const rows = await db.all(`${COLUMNS} ORDER BY article_id DESC LIMIT 10`);
    res.json(rows.map(article));
  }));

  app.get('/bbs/previous/:article_id', requireReady, route(async (req, res) => {
    const before = articleId(req.params.article_id);
    const rows = await db.all(`${COLUMNS} WHERE article_id < ? ORDER BY article_id DESC LIMIT 10`, [before]);
    res.json(rows.map(article));
  }));

  app.get('/bbs/user/:id', requireReady, route(async (req, res) => {
    const errors = [];
    text('id', req.params.id, LIMITS.id, errors);
    if (errors.length) throw new BadRequest(errors);
    const rows = await db.all(`${COLUMNS} WHERE id = ? ORDER BY article_id DESC`, [req.params.id]);
    res.json(rows.map(article));
  }));

  const json = express.json({ limit: '64kb', strict: true });
  app.post(['/bbs', '/bbs/'], requireReady, json, route(async (req, res) => {
    const body = req.body;
    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
      throw new BadRequest([{ field: 'body', message: 'must be a JSON object {"id","title","content"}' }]);
    }
    const errors = [];
    for (const field of ['id', 'title', 'content']) text(field, body[field], LIMITS[field], errors);
    if (errors.length) throw new BadRequest(errors);
    const { insertId } = await db.run('INSERT INTO board (id, title, content) VALUES (?, ?, ?)', [body.id, body.title, body.content]);
    res.status(201).json({ article_id: Number(insertId), id: body.id, title: body.title, content: body.content, likeit: 0 });
  }));

  app.put('/bbs/:article_id', requireReady, route(async (req, res) => {
    const id = articleId(req.params.article_id);
    const { changes } = await db.run('UPDATE board SET likeit = likeit + 1 WHERE article_id = ?', [id]);
    if (changes === 0) throw new NotFound(`no article ${id}`);
    const rows = await db.all(`${COLUMNS} WHERE article_id = ?`, [id]);
    res.json(article(rows[0]));
  }));

  app.delete('/bbs/:article_id', requireReady, route(async (req, res) => {
    const id = articleId(req.params.article_id);
    const { changes } = await db.run('DELETE FROM board WHERE article_id = ?', [id]);
    if (changes === 0) throw new NotFound(`no article ${id}`);
    res.status(204).end();
  }));

  app.use((req, res) => {
    res.status(404).json(springError(404, `no route for ${req.method} ${req.path}`, req.path));
  });

  // Four arguments: Express's error middleware.
  // eslint-disable-next-line no-unused-vars
  app.use((err, req, res, next) => {
    if (err instanceof BadRequest) {
      res.status(400).json(springError(400, err.message, req.path, err.errors));
    } else if (err.type === 'entity.parse.failed') {
      const errors = [{ field: 'body', message: `not valid JSON: ${err.message}` }];
      res.status(400).json(springError(400, `body: not valid JSON: ${err.message}`, req.path, errors));
    } else if (err.type === 'entity.too.large') {
      res.status(413).json(springError(413, 'the body is larger than 64 KB', req.path));
    } else if (err instanceof NotFound) {
      res.status(404).json(springError(404, err.message, req.path));
    } else if (err instanceof Unavailable) {
      res.status(503).json(springError(503, `the database is not reachable (${err.message}); try again shortly`, req.path));
    } else {
      console.error(`${new Date().toISOString()} ERROR ${req.method} ${req.path}: ${err.stack || err}`);
      res.status(500).json(springError(500, 'database error', req.path));
    }
  });
  return app;
}

module.exports = { createApp, springError, LIMITS };
