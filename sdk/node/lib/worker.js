'use strict';
// The worker process: its slots, the features it uses, the handler's
// invocation, and how it stops (ipc/PROTOCOL.md 2, 5, 9).

const path = require('path');
const { AsyncLocalStorage } = require('async_hooks');
const { FrameWriter, ProtocolError, WINDOW, WIDE_WINDOW, CHUNK_SIZE, WIDE_CHUNK_SIZE, WIDE_CHUNK_MAX_FRAME } = require('./wire');
const { Slot } = require('./slot');
const { root } = require('./log');

// How long a worker asked to quit waits for the requests in flight.
const SHUTDOWN_GRACE_MS = 30000;

// current holds the exchange whose handler code is running, through every
// callback and promise it starts: an exception thrown anywhere in it is
// that request's.
const current = new AsyncLocalStorage();

class Worker {
  constructor(cfg, listener) {
    this.listener = listener;
    this.maxFrame = cfg.maxFrame;
    this.depth = cfg.depth;
    const has = (f) => cfg.features.has(f);
    this.informational = has('informational');
    this.headAck = has('head-ack');
    const wideWindow = this.headAck && has('wide-window');
    this.window = wideWindow ? WIDE_WINDOW : WINDOW;
    const wideChunk = has('wide-chunk') && cfg.maxFrame >= WIDE_CHUNK_MAX_FRAME;
    this.chunk = wideChunk ? WIDE_CHUNK_SIZE : CHUNK_SIZE;
    // The pongs list the announced features this worker uses. Wide chunks
    // are accepted from the dispatcher too, and a request marked continue
    // gets its window at the handler's first read. A queued request is
    // given back when the dispatcher withdraws it.
    this.features = [];
    if (this.informational) this.features.push('informational');
    if (this.headAck) this.features.push('head-ack');
    if (wideWindow) this.features.push('wide-window');
    if (wideChunk) this.features.push('wide-chunk');
    if (has('continue')) this.features.push('continue');
    if (has('withdraw')) this.features.push('withdraw');
    this.writer = new FrameWriter();
    this.log = root;
    this.inflight = 0;
    this.open = 0;
    this.quitting = false;
    this.abandoned = [];
    this.slots = cfg.fds.map((fd) => new Slot(this, fd));
    this.open = this.slots.length;
  }

  pong(id) {
    return this.writer.pong(id, this.features);
  }

  // invoke runs the handler for ex. A synchronous throw or a rejected
  // promise is the handler's failure; so is an uncaught exception from the
  // callbacks it started (see uncaught).
  invoke(ex) {
    current.run(ex, call, this.listener, ex);
  }

  // within runs fn(ex, arg) in ex's context, where the sdk calls into the
  // handler's code (the events of req and res) from outside it: an
  // exception fails the exchange, and what the code starts stays ex's. A
  // protocol violation goes on to the slot.
  within(ex, fn, arg) {
    current.run(ex, runWithin, fn, ex, arg);
  }

  // slotClosed is told each slot's end, after its exchanges were
  // abandoned.
  slotClosed(abandoned) {
    this.abandoned.push(...abandoned);
    if (--this.open > 0) return;
    // Every slot is closed: no request can come any more.
    if (this.abandoned.length > 0) this.stopping('every slot closed', this.abandoned);
    setImmediate(() => process.exit(0));
  }

  exchangeDone() {
    if (this.quitting && this.inflight === 0) process.exit(0);
  }

  // quit stops the worker once the requests in flight are answered (at
  // most SHUTDOWN_GRACE_MS).
  quit() {
    if (this.quitting) return;
    this.quitting = true;
    if (this.inflight === 0) process.exit(0);
    setTimeout(() => {
      this.log.warn('stopping with requests still in flight', { grace_ms: SHUTDOWN_GRACE_MS, inflight: this.inflight });
      process.exit(0);
    }, SHUTDOWN_GRACE_MS).unref();
  }

  // uncaught handles an exception no code caught (or a rejection no code
  // handled): the request whose code threw it answers 500 (or is cut, if
  // its response started) and the worker serves on. Thrown outside any
  // request, it is fatal, as it is in Node.
  uncaught(err) {
    const ex = current.getStore();
    if (ex) {
      ex.fail(err);
      return;
    }
    this.log.error(`uncaught exception outside any request: ${err instanceof Error ? err.message : String(err)}; exiting`, { stack: err instanceof Error ? err.stack : undefined });
    process.exit(1);
  }

  // stopping says which requests the worker was serving when the
  // dispatcher gave up on it: after a timeout it sends SIGQUIT, then
  // SIGKILL a second later, and closes the slots.
  stopping(why, exchanges) {
    const busy = exchanges.filter((ex) => ex.req).map((ex) => `${ex.req.method} ${ex.req.url} (request ${ex.requestId})`);
    this.log.error(`stopping (${why}) with ${busy.length} request(s) in flight${busy.length ? ': ' + busy.join(', ') : ''}`);
  }
}

function runWithin(fn, ex, arg) {
  try {
    fn(ex, arg);
  } catch (err) {
    if (err instanceof ProtocolError) throw err;
    ex.fail(err);
  }
}

function call(listener, ex) {
  try {
    const r = typeof listener === 'function' ? listener(ex.req, ex.res) : listener.emit('request', ex.req, ex.res);
    if (r && typeof r.then === 'function') r.then(undefined, (err) => ex.fail(err));
  } catch (err) {
    ex.fail(err);
  }
}

// start serves listener on the slots cfg names and prints the handshake
// line, listening on the control socket first if the dispatcher may
// connect to it.
function start(cfg, listener) {
  const w = new Worker(cfg, listener);
  process.on('uncaughtException', (err) => w.uncaught(err));
  process.on('unhandledRejection', (err) => w.uncaught(err));
  const onQuit = () => {
    w.stopping('SIGQUIT: quarantined by the dispatcher', w.slots.filter((sl) => sl.cur).map((sl) => sl.cur));
    process.removeListener('SIGQUIT', onQuit);
    process.kill(process.pid, 'SIGQUIT');
  };
  process.on('SIGQUIT', onQuit);
  const dir = cfg.socketDir || cfg.tmpDir;
  if (!cfg.control) {
    // No connection will come: the line names a socket the worker does
    // not make (PROTOCOL.md 2.2).
    writeHandshake(path.join(dir, 'plugin'));
    return w;
  }
  const control = require('./control');
  control.listenControl(cfg.socketDir, cfg.tmpDir, (sock) => control.serveControl(sock, () => w.quit()), (err, srv, p) => {
    if (err) {
      process.stderr.write(`dispatcher worker: control socket: ${err.message}\n`);
      process.exit(1);
    }
    srv.unref();
    control.removeSocketAtExit(p);
    writeHandshake(p);
  });
  return w;
}

// writeHandshake prints go-plugin's line naming the control socket: core
// protocol 1, this protocol's version 1, netrpc. Straight to descriptor 1:
// process.stdout, a stream over it, is made only if the handler prints.
function writeHandshake(socketPath) {
  require('fs').writeSync(1, `1|1|unix|${socketPath}|netrpc|\n`);
}

// currentExchange returns the exchange whose code is running, if any.
function currentExchange() {
  return current.getStore();
}

module.exports = { start, currentExchange };
