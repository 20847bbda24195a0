'use strict';
// The database behind /bbs: SQLite (node-sqlite3) by default, MariaDB/MySQL
// (node-mysql) when given a URL. Both answer the same small interface:
//
//   all(sql, params)  → rows            run(sql, params) → { insertId, changes }
//   ping()            → resolves when the database answers
//   migrate()         → creates the `board` table if it is missing
//   close()
//
// SQL is written once with `?` placeholders, which both drivers take.
// A failure to reach the database is an Unavailable error (503); the service
// keeps running and its health says DOWN until the database answers again.

const fs = require('fs');
const path = require('path');

class Unavailable extends Error {}

const SCHEMA = {
  sqlite: `CREATE TABLE IF NOT EXISTS board (
    article_id INTEGER PRIMARY KEY AUTOINCREMENT,
    id VARCHAR(20) NOT NULL,
    title VARCHAR(100) NOT NULL,
    content TEXT NOT NULL,
    likeit INTEGER NOT NULL DEFAULT 0)`,
  mysql: `CREATE TABLE IF NOT EXISTS board (
    article_id INT AUTO_INCREMENT PRIMARY KEY,
    id VARCHAR(20) NOT NULL,
    title VARCHAR(100) NOT NULL,
    content TEXT NOT NULL,
    likeit INT NOT NULL DEFAULT 0,
    INDEX board_by_user (id)) DEFAULT CHARSET=utf8mb4`,
};

/**
 * Whether SQLite `version` ("3.40.1") is safe in WAL mode with several
 * processes on one file: every release from 3.7.0 to 3.51.2 has the
 * WAL-reset race (sqlite.org/wal.html), in which a checkpoint running while
 * another process writes can drop committed transactions. node-sqlite3
 * uses the system's library (Debian 12: 3.40.1).
 */
function walIsSafe(version) {
  const [major, minor, patch] = String(version).split('.').map((n) => parseInt(n, 10) || 0);
  return major > 3 || (major === 3 && (minor > 51 || (minor === 51 && patch >= 3)));
}

/**
 * SQLite through node-sqlite3; several replicas may share one file. WAL
 * where the library is safe in it, else the rollback journal: writers take
 * the file in turn and readers wait out a write (busy timeout), slower but
 * never losing a committed write.
 */
function openSqlite(file) {
  const sqlite3 = require('sqlite3');
  if (file !== ':memory:') fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  const db = new sqlite3.Database(file);
  // Replicas of a local cluster share the file: wait for a lock rather than fail.
  db.configure('busyTimeout', 5000);
  const call = (method, sql, params) =>
    new Promise((resolve, reject) => {
      db[method](sql, params, function done(err, rows) {
        if (err) {
          reject(err.code === 'SQLITE_CANTOPEN' || err.code === 'SQLITE_IOERR' ? new Unavailable(err.message) : err);
        } else if (method === 'run') {
          resolve({ insertId: this.lastID, changes: this.changes });
        } else {
          resolve(rows);
        }
      });
    });
  return {
    kind: 'sqlite',
    all: (sql, params = []) => call('all', sql, params),
    run: (sql, params = []) => call('run', sql, params),
    ping: () => call('all', 'SELECT 1', []),
    migrate: async () => {
      if (file !== ':memory:') {
        const wanted = walIsSafe(sqlite3.VERSION) ? 'wal' : 'delete';
        const [row] = await call('all', `PRAGMA journal_mode=${wanted}`, []);
        const mode = String((row && row.journal_mode) || '').toLowerCase();
        if (mode !== wanted) {
          // Another replica holds the file open in the old mode: it stays.
          console.log(`${new Date().toISOString()} WARN SQLite ${sqlite3.VERSION}: journal mode ${mode}, not ${wanted} (another process has ${file} open)`);
        }
      }
      await call('run', SCHEMA.sqlite, []);
      await call('run', 'CREATE INDEX IF NOT EXISTS board_by_user ON board (id)', []);
    },
    close: () => new Promise((resolve) => db.close(() => resolve())),
  };
}

/** MariaDB/MySQL through a node-mysql pool. */
function openMysql(options) {
  const mysql = require('mysql');
  const pool = mysql.createPool({
    host: options.host,
    port: options.port,
    user: options.user,
    password: options.password,
    database: options.database,
    connectionLimit: 10,
    connectTimeout: 2000,
    acquireTimeout: 2000,
    charset: 'utf8mb4',
  });
  const lost = new Set(['ECONNREFUSED', 'ECONNRESET', 'PROTOCOL_CONNECTION_LOST', 'ETIMEDOUT', 'ENOTFOUND', 'EHOSTUNREACH', 'PROTOCOL_SEQUENCE_TIMEOUT', 'ER_CON_COUNT_ERROR']);
  const query = (sql, params) =>
    new Promise((resolve, reject) => {
      pool.query({ sql, values: params, timeout: 5000 }, (err, result) => {
        if (err) {
          reject(lost.has(err.code) || err.fatal ? new Unavailable(`${err.code}: ${err.message}`) : err);
        } else {
          resolve(result);
        }
      });
    });
  return {
    kind: 'mysql',
    all: (sql, params = []) => query(sql, params),
    run: async (sql, params = []) => {
      const r = await query(sql, params);
      return { insertId: r.insertId, changes: r.affectedRows };
    },
    ping: () => query('SELECT 1', []),
    migrate: () => query(SCHEMA.mysql, []),
    close: () => new Promise((resolve) => pool.end(() => resolve())),
  };
}

function open(database) {
  return database.kind === 'sqlite' ? openSqlite(database.file) : openMysql(database);
}

module.exports = { open, Unavailable, walIsSafe };
