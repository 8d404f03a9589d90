#!/usr/bin/env node
// The Express app of app.js as a dispatcher worker: serve(app) where the
// app would have been app.listen(port).
//
//   cd examples/node-express && npm ci
//   dispatcher --workers examples/node-express/server.js --listen 127.0.0.1:8080
//   curl -s 127.0.0.1:8080/quotes -H 'Content-Type: application/json' -d '{"items":[{"id":"p2","qty":3}]}'
'use strict';

const { serve } = require('@childproc/dispatcher-sdk');
const app = require('./app');

serve(app);
