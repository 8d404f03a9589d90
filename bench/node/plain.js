#!/usr/bin/env node
// Reference: handler.js in one plain Node.js http server process, the CPU
// per request the sdk is compared with.
//
//   node plain.js PORT
'use strict';

require('http').createServer(require('./handler')).listen(Number(process.argv[2]), '127.0.0.1');
// Exit normally on SIGTERM, so that --cpu-prof writes its profile.
process.on('SIGTERM', () => process.exit(0));
