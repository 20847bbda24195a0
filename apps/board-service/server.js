'use strict';
// board-service: the classic stack's /bbs service in Node.js + Express, on
// port 3000. It knows nothing of shoal: `shoal sidecar` beside it advertises
// it to the cluster and follows GET /bbs/health (see the README,
// "board-service and the sidecar").
//
// Start: configuration from the environment (lib/config.js), then listen at
// once; the database is connected and migrated in the background with
// backoff, and health says DOWN until it answers. SIGTERM/SIGINT: stop
// accepting, finish requests in flight (at most 10 s), close the database.

const { load, ConfigError } = require('./lib/config');
const db = require('./lib/db');
const { createApp } = require('./lib/app');

function log(level, message) {
  console.log(`${new Date().toISOString()} ${level} ${message}`);
}

async function connect(database, state, config) {
  let delay = 200;
  for (;;) {
    try {
      await database.migrate();
      state.ready = true;
      log('INFO', `database ready (${config.databaseUrl})`);
      return;
    } catch (err) {
      log('WARN', `database not ready (${config.databaseUrl}): ${err.message}; retrying in ${delay} ms`);
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 5000);
    }
  }
}

function main() {
  let config;
  try {
    config = load(process.env);
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(`board-service: ${err.message}`);
      process.exit(2);
    }
    throw err;
  }
  const database = db.open(config.database);
  const state = { ready: false };
  const app = createApp({ db: database, hostname: config.hostname, accessLog: config.accessLog, state });
  const server = app.listen(config.port, config.host, () => {
    log('INFO', `board-service listening on ${config.host}:${config.port}`);
  });
  server.keepAliveTimeout = 65_000;
  server.on('error', (err) => {
    console.error(`board-service: cannot listen on ${config.host}:${config.port} (HOST / PORT): ${err.message}`);
    process.exit(1);
  });
  connect(database, state, config);

  let stopping = false;
  const stop = (signal) => {
    if (stopping) return;
    stopping = true;
    log('INFO', `${signal}: stopping, finishing requests in flight`);
    const force = setTimeout(() => {
      log('WARN', 'requests still in flight after 10 s; exiting');
      process.exit(0);
    }, 10_000);
    force.unref();
    server.close(async () => {
      await database.close();
      log('INFO', 'stopped');
      process.exit(0);
    });
    // Idle keep-alive connections would hold close() open.
    if (server.closeIdleConnections) server.closeIdleConnections();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

main();
