'use strict';
// @childproc/dispatcher-sdk runs a Node.js HTTP handler as a dispatcher
// worker: the listener http.createServer takes, an Express app, or an
// http.Server, unchanged.
//
//   const { serve } = require('@childproc/dispatcher-sdk');
//   serve((req, res) => res.end('hello world\n'));
//
// The handler gets a real http.IncomingMessage and http.ServerResponse.
// An exception it throws (or a promise it rejects, or an exception from a
// callback it started) answers 500, or cuts the client's connection if the
// response had started; the worker serves on. Whatever the process prints
// on standard output and standard error after serve() becomes dispatcher
// log lines: print nothing on standard output before it (its first line is
// the handshake). The sdk implements the worker's side of the dispatcher's
// wire protocol (ipc/PROTOCOL.md in the dispatcher's repository); limits
// and sandboxing are the dispatcher's.

const { readEnv, NotWorkerError } = require('./env');
const { start, currentExchange } = require('./worker');
const { kExchange } = require('./http');
const { root } = require('./log');


let started = false;

// serve runs listener for every request the dispatcher sends this process.
// listener is a function (req, res), such as an Express app, or an
// http.Server (its 'request' listeners run). Started outside a dispatcher,
// serve explains that on standard error and exits with status 1.
function serve(listener) {
  const ok = typeof listener === 'function' || (listener !== null && typeof listener === 'object' && typeof listener.emit === 'function');
  if (!ok) throw new TypeError('serve: want a request listener (req, res) or an http.Server');
  if (started) throw new Error('serve: called twice');
  started = true;
  let cfg;
  try {
    cfg = readEnv(process.env);
  } catch (err) {
    if (!(err instanceof NotWorkerError)) throw err;
    const script = process.argv[1] || process.argv0;
    process.stderr.write(`${err.message}\nThis program is a dispatcher worker: run it with \`dispatcher --workers ${script}\`.\n`);
    process.exit(1);
  }
  // The slots are this process's alone: processes it starts must not
  // inherit their numbers (Node already closes the descriptors on exec).
  delete process.env.DISPATCHER_IPC_FDS;
  start(cfg, listener);
}

function exchangeOf(msg) {
  if (msg && msg[kExchange]) return msg[kExchange];
  return msg === undefined ? currentExchange() : undefined;
}

// requestId returns the dispatcher's ID of the request req (or res), also
// in its X-Request-Id header; without an argument, that of the request
// whose code is running. '' if none.
function requestId(req) {
  const ex = exchangeOf(req);
  return ex ? ex.requestId : '';
}

// deadline returns when the request must be answered by (the dispatcher's
// --timeout, counted from when this worker started it), as a Date, or
// undefined if it has none.
function deadline(req) {
  const ex = exchangeOf(req);
  return ex && ex.deadlineAt > 0 ? new Date(ex.deadlineAt) : undefined;
}

// signal returns an AbortSignal for the request: aborted when its client
// goes away or the dispatcher gives up on it (the reason is an Error), when
// its handler failed, and at its deadline (a TimeoutError DOMException).
// Pass it on to fetch() or timers/promises to stop work nobody waits for.
function signal(req) {
  const ex = exchangeOf(req);
  if (!ex) throw new TypeError('signal: not a request of this worker');
  return ex.signal();
}

// logger returns a logger whose lines reach the dispatcher's log at their
// level (debug, info, warn, error), each a message and optional fields;
// given a request (or res), with its request ID.
function logger(req) {
  const id = requestId(req);
  return id ? root.with({ request_id: id }) : root;
}

module.exports = {
  serve,
  requestId,
  deadline,
  signal,
  logger,
  // VERSION names this sdk and its version; read when asked for, as a
  // oneshot worker never does.
  get VERSION() {
    return 'node-sdk/' + require('../package.json').version;
  },
};
