'use strict';
// Configuration from the environment, read once, in one place. A bad value
// stops the service at start with the variable, the value and what is
// accepted, like the Rust services.
//
//   PORT          3000                      the HTTP port
//   HOST          0.0.0.0                   the address to listen on
//   DATABASE_URL  sqlite://data/board.db    sqlite://<file>, sqlite::memory:,
//                                           mysql://user:pass@host:port/db (mariadb:// too)
//   HOSTNAME      the host name             answered by GET /bbs/service/host
//   ACCESS_LOG    true                      one line per request on stdout

const os = require('os');

class ConfigError extends Error {}

function invalid(name, value, expected) {
  return new ConfigError(`${name}=${JSON.stringify(value)} is not valid: expected ${expected}`);
}

function parseDatabaseUrl(raw) {
  if (raw === 'sqlite::memory:') return { kind: 'sqlite', file: ':memory:' };
  const sqlite = /^sqlite:\/\/(.+?)(\?.*)?$/.exec(raw);
  if (sqlite) return { kind: 'sqlite', file: sqlite[1] };
  const mysql = /^(mysql|mariadb):\/\/(?:([^:@/]*)(?::([^@/]*))?@)?([^:/?]+)(?::(\d+))?\/([^?]+)/.exec(raw);
  if (mysql) {
    return {
      kind: 'mysql',
      user: decodeURIComponent(mysql[2] || 'root'),
      password: decodeURIComponent(mysql[3] || ''),
      host: mysql[4],
      port: Number(mysql[5] || 3306),
      database: decodeURIComponent(mysql[6]),
    };
  }
  return null;
}

/** The password of a URL replaced, for messages. */
function redact(url) {
  return url.replace(/^([a-z]+:\/\/[^:@/]*:)[^@/]*@/, '$1***@');
}

function load(env) {
  const port = env.PORT === undefined || env.PORT === '' ? 3000 : Number(env.PORT);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw invalid('PORT', env.PORT, 'a TCP port, 1-65535');
  }
  const host = env.HOST || '0.0.0.0';
  const databaseUrl = env.DATABASE_URL || 'sqlite://data/board.db';
  const database = parseDatabaseUrl(databaseUrl);
  if (!database) {
    throw invalid('DATABASE_URL', redact(databaseUrl), 'sqlite://<file>, sqlite::memory: or mysql://user:pass@host:port/db');
  }
  const accessLog = (env.ACCESS_LOG || 'true').toLowerCase();
  if (!['true', 'false', '1', '0'].includes(accessLog)) {
    throw invalid('ACCESS_LOG', env.ACCESS_LOG, 'true or false');
  }
  return {
    port,
    host,
    database,
    databaseUrl: redact(databaseUrl),
    hostname: env.HOSTNAME || os.hostname(),
    accessLog: accessLog === 'true' || accessLog === '1',
  };
}

module.exports = { load, parseDatabaseUrl, redact, ConfigError };
