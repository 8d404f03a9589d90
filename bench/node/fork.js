#!/usr/bin/env node
// Baseline: a fresh Node.js process per request, as a Node developer
// would isolate requests without the dispatcher. The master parses HTTP,
// forks forkchild.js for each request, sends it the request
// (child.send), writes the child's reply (process.send) and kills it.
//
//   node fork.js PORT
'use strict';

const http = require('http');
const path = require('path');
const { fork } = require('child_process');

const child = path.join(__dirname, 'forkchild.js');

http.createServer((req, res) => {
  const body = [];
  req.on('data', (c) => body.push(c));
  req.on('end', () => {
    let c;
    try {
      c = fork(child, [], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
    } catch (err) {
      // Out of processes or memory: this request fails, the server goes on.
      res.statusCode = 503;
      res.end(`${err.code || err.message}\n`);
      return;
    }
    c.on('error', () => {});
    // The reply, or a 502 if the child died first: whichever comes first.
    let answered = false;
    c.once('message', (m) => {
      if (answered) return;
      answered = true;
      res.writeHead(m.status, m.headers);
      res.end(Buffer.from(m.body, 'base64'));
      c.kill('SIGKILL');
    });
    c.once('exit', () => {
      if (answered) return;
      answered = true;
      res.statusCode = 502;
      res.end();
    });
    c.send({ method: req.method, url: req.url, headers: req.headers, body: Buffer.concat(body).toString('base64') });
  });
}).listen(Number(process.argv[2]), '127.0.0.1');
