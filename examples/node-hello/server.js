#!/usr/bin/env node
// The smallest Node.js worker: the listener http.createServer takes,
// served by the dispatcher instead of a port.
//
//   cd examples/node-hello && npm ci
//   dispatcher --workers examples/node-hello/server.js --listen 127.0.0.1:8080
'use strict';

const { serve } = require('@childproc/dispatcher-sdk');

serve((req, res) => {
  res.setHeader('Content-Type', 'text/plain; charset=utf-8');
  res.end('hello world\n');
});
