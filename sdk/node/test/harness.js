'use strict';
// A stand-in for the dispatcher, for the sdk's own tests: it starts a
// worker script with the protocol's environment and slot sockets (the
// child's fds 3.. are socketpairs, which is what Node's 'pipe' stdio
// creates), reads the handshake line, and speaks frames on the slots.

const { spawn } = require('child_process');
const path = require('path');
const { Encoder, Decoder } = require('@msgpack/msgpack');
const { Kind } = require('../lib/wire');

const COOKIE = 'b6f3f1c4e0a94f3c9d3c2a7e5b1d8f60';
const ALL_FEATURES = 'informational,head-ack,wide-window,continue,wide-chunk,withdraw';
const WAIT_MS = 10000;

const encoder = new Encoder();
const decoder = new Decoder();

function frame(kind, value) {
  const payload = encoder.encode(value);
  const f = Buffer.alloc(5 + payload.length);
  f.writeUInt32BE(payload.length + 1, 0);
  f[4] = kind;
  f.set(payload, 5);
  return f;
}

// Peer is the dispatcher's end of one slot.
class Peer {
  constructor(socket) {
    this.socket = socket;
    this.nextId = 1;
    this.frames = [];
    this.waiters = [];
    this.closed = false;
    this.buf = Buffer.alloc(0);
    socket.on('data', (chunk) => {
      this.buf = Buffer.concat([this.buf, chunk]);
      while (this.buf.length >= 4 && this.buf.length >= 4 + this.buf.readUInt32BE(0)) {
        const n = this.buf.readUInt32BE(0);
        const kind = this.buf[4];
        const a = decoder.decode(this.buf.subarray(5, 4 + n));
        this.buf = this.buf.subarray(4 + n);
        this.deliver(parse(kind, a));
      }
    });
    socket.on('close', () => {
      this.closed = true;
      this.deliver(null);
    });
    socket.on('error', () => {});
  }

  deliver(f) {
    const w = this.waiters.shift();
    if (w) w(f);
    else this.frames.push(f);
  }

  // next resolves to the next frame from the worker, or null once the slot
  // is closed.
  next() {
    if (this.frames.length > 0) return Promise.resolve(this.frames.shift());
    if (this.closed) return Promise.resolve(null);
    return withTimeout(new Promise((resolve) => this.waiters.push(resolve)), 'a frame from the worker');
  }

  send(kind, value) {
    this.socket.write(frame(kind, value));
  }

  id() {
    return this.nextId++;
  }

  async ping() {
    const id = this.id();
    this.send(Kind.PING, [id]);
    const f = await this.next();
    if (!f || f.kind !== Kind.PONG || f.id !== id) throw new Error(`want pong ${id}, got ${JSON.stringify(f)}`);
    return f;
  }

  // request sends a request frame and returns its id. r: method, uri,
  // header ({Name: [values]}), body (Buffer), eof (default true), cont,
  // timeoutMs, contentLength.
  request(r = {}) {
    const id = this.id();
    const body = r.body || Buffer.alloc(0);
    const a = [
      id, r.method || 'GET', r.uri || '/', r.proto || 'HTTP/1.1', r.header || { 'User-Agent': ['harness'] },
      r.host ?? 'example.test', r.remoteAddr ?? '192.0.2.7:51234',
      r.contentLength ?? (r.eof === false ? -1 : body.length), r.requestId ?? `req-${id}`, body, r.eof ?? true,
    ];
    if (r.cont !== undefined || r.timeoutMs !== undefined) a.push(Boolean(r.cont));
    if (r.timeoutMs !== undefined) a.push(r.timeoutMs);
    if (r.extra) a.push(...r.extra);
    this.send(Kind.REQUEST, a);
    return id;
  }

  body(id, data) {
    this.send(Kind.BODY, [id, data]);
  }

  end(id, trailer = null) {
    this.send(Kind.END, [id, trailer]);
  }

  cancel(id) {
    this.send(Kind.CANCEL, [id]);
  }

  withdraw(id) {
    this.send(Kind.WITHDRAW, [id]);
  }

  // response collects the answer to request id: status, header, body,
  // trailer, and every frame of it (window frames included), or aborted
  // and reason.
  async response(id) {
    const r = { frames: [], body: Buffer.alloc(0), informational: [] };
    for (;;) {
      const f = await this.next();
      if (!f) throw new Error(`slot closed while waiting for the answer to ${id}`);
      r.frames.push(f);
      if (f.id !== id) throw new Error(`frame for ${f.id} while ${id} was due: ${JSON.stringify(f)}`);
      switch (f.kind) {
        case Kind.WINDOW:
          continue;
        case Kind.INFORMATIONAL:
          r.informational.push(f);
          continue;
        case Kind.ABORT:
          r.aborted = true;
          r.reason = f.reason;
          return r;
        case Kind.RESPONSE:
          r.status = f.status;
          r.header = f.header || {};
          r.body = Buffer.concat([r.body, f.body]);
          if (f.eof) {
            r.trailer = f.trailer;
            return r;
          }
          continue;
        case Kind.BODY:
          r.body = Buffer.concat([r.body, f.data]);
          continue;
        case Kind.END:
          r.trailer = f.trailer;
          return r;
        default:
          throw new Error(`unexpected frame ${JSON.stringify(f)}`);
      }
    }
  }

  // exchange sends a request and returns its answer.
  exchange(r) {
    return this.response(this.request(r));
  }
}

function parse(kind, a) {
  const f = { kind, id: a[0] };
  switch (kind) {
    case Kind.RESPONSE:
      Object.assign(f, { status: a[1], header: a[2], body: Buffer.from(a[3] || []), eof: a[4], trailer: a[5] });
      break;
    case Kind.BODY:
      f.data = Buffer.from(a[1] || []);
      break;
    case Kind.END:
      f.trailer = a[1];
      break;
    case Kind.PONG:
      f.features = a[1] || [];
      break;
    case Kind.WINDOW:
      f.n = a[1];
      break;
    case Kind.ABORT:
      f.reason = a[1];
      break;
    case Kind.INFORMATIONAL:
      Object.assign(f, { status: a[1], header: a[2] });
      break;
  }
  return f;
}

function withTimeout(p, what) {
  let t;
  return Promise.race([
    p,
    new Promise((resolve, reject) => {
      t = setTimeout(() => reject(new Error(`no ${what} within ${WAIT_MS} ms`)), WAIT_MS);
    }),
  ]).finally(() => clearTimeout(t));
}

// startWorker starts script as a worker with the given number of slots and
// resolves once it printed its handshake line and answered a ping on each
// slot. opts: slots, depth, maxFrame, features (all by default), env
// (added; DISPATCHER_CONTROL=none unless overridden), execArgv (node's
// options, such as --cpu-prof).
async function startWorker(script, opts = {}) {
  const n = opts.slots || 1;
  const env = {
    PATH: process.env.PATH,
    DISPATCHER_WORKER_COOKIE: COOKIE,
    DISPATCHER_IPC_FDS: Array.from({ length: n }, (_, i) => 3 + i).join(','),
    DISPATCHER_IPC_MAX_FRAME: String(opts.maxFrame || 1 << 20),
    DISPATCHER_IPC_DEPTH: String(opts.depth || 1),
    DISPATCHER_IPC_FEATURES: opts.features ?? ALL_FEATURES,
    PLUGIN_PROTOCOL_VERSIONS: '1',
    DISPATCHER_CONTROL: 'none',
    PLUGIN_UNIX_SOCKET_DIR: '/tmp',
    ...opts.env,
  };
  const child = spawn(process.execPath, [...(opts.execArgv || []), path.resolve(__dirname, script)], {
    env,
    stdio: ['ignore', 'pipe', 'pipe', ...Array(n).fill('pipe')],
  });
  const w = {
    child,
    stdout: '',
    stderr: '',
    slots: [],
    exited: new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal }))),
  };
  child.stderr.on('data', (d) => {
    w.stderr += d;
  });
  const handshake = new Promise((resolve, reject) => {
    child.stdout.on('data', (d) => {
      w.stdout += d;
      if (w.stdout.includes('\n')) resolve(w.stdout.split('\n')[0]);
    });
    child.on('exit', (code) => reject(new Error(`worker exited with ${code} before its handshake: ${w.stderr}`)));
  });
  w.handshake = await withTimeout(handshake, 'handshake line');
  for (let i = 0; i < n; i++) w.slots.push(new Peer(child.stdio[3 + i]));
  for (const s of w.slots) w.features = (await s.ping()).features;
  // stop kills the worker; its slots close.
  w.stop = () => {
    child.kill('SIGKILL');
    return w.exited;
  };
  // logs returns the worker's JSON log lines on standard error.
  w.logs = () => w.stderr.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
  return w;
}

module.exports = { startWorker, Kind, COOKIE, WAIT_MS };
