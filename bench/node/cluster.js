#!/usr/bin/env node
// Baseline: Node's cluster pattern. The primary forks one worker per CPU;
// the workers share the listening port and answer in-process, as
// http.createServer does (no hop to another process per request).
//
//   node cluster.js PORT
'use strict';

const cluster = require('cluster');
const http = require('http');
const os = require('os');
const handler = require('./handler');

const port = Number(process.argv[2]);
if (cluster.isPrimary) {
  for (let i = 0; i < os.availableParallelism(); i++) cluster.fork();
  // A worker that dies is not replaced: the cluster module leaves that to
  // the application, and the bench would rather see it.
  process.on('SIGTERM', () => {
    for (const w of Object.values(cluster.workers)) w.process.kill('SIGTERM');
    process.exit(0);
  });
} else {
  http.createServer(handler).listen(port, '127.0.0.1');
}
