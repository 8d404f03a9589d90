'use strict';
// go-plugin's handshake and control connection, the worker's side
// (ipc/PROTOCOL.md 2.2 and appendix B). This dispatcher never connects to
// the control socket (DISPATCHER_CONTROL=none), but others may, and the
// conformance kit does: on the one connection, a yamux server whose first
// stream carries net/rpc with gob for Control.Ping and Control.Quit. Only
// that subset is served, from fixed gob templates, as the Go sdk does
// (ipc/control.go).

const fs = require('fs');
const net = require('net');
const path = require('path');

const YAMUX_HEADER = 12;
const YAMUX_WINDOW = 256 << 10;
const DATA = 0;
const WINDOW_UPDATE = 1;
const PING = 2;
const GO_AWAY = 3;
const SYN = 1;
const ACK = 2;
const FIN = 4;
const RST = 8;
const CONTROL_STREAM = 1;
const MAX_MESSAGE = 4 << 10;
const MAX_REPLIES = 1 << 20;

// The gob bytes of the replies, as Go's net/rpc server sends them: the type
// definitions (before the first reply only), then each reply's header and
// its empty value.
const GOB_RESPONSE_TYPE = Buffer.from([
  0x39, 0x7f, 0x03, 0x01, 0x01, 0x08, ...Buffer.from('Response'),
  0x01, 0xff, 0x80, 0x00, 0x01, 0x03,
  0x01, 0x0d, ...Buffer.from('ServiceMethod'), 0x01, 0x0c, 0x00,
  0x01, 0x03, ...Buffer.from('Seq'), 0x01, 0x06, 0x00,
  0x01, 0x05, ...Buffer.from('Error'), 0x01, 0x0c, 0x00,
  0x00, 0x00,
]);
const GOB_EMPTY_TYPE = Buffer.from([0x0a, 0xff, 0x81, 0x03, 0x01, 0x02, 0xff, 0x82, 0x00, 0x00, 0x00]);
const GOB_EMPTY_VALUE = Buffer.from([0x03, 0xff, 0x82, 0x00]);

// listenControl listens on a unix socket in dir (go-plugin makes it for this
// worker alone, so a fixed name does), or under a random name in tmpDir;
// it calls back with the server and the socket's path.
function listenControl(dir, tmpDir, onConnection, cb) {
  let tries = 0;
  const attempt = () => {
    const name = dir && tries === 0 ? 'plugin' : 'plugin' + Math.random().toString(36).slice(2);
    const p = path.join(dir || tmpDir, name);
    const srv = net.createServer(onConnection);
    srv.once('error', (err) => {
      if (err.code === 'EADDRINUSE' && ++tries < 4) attempt();
      else cb(err);
    });
    srv.listen(p, () => cb(null, srv, p));
  };
  attempt();
}

// serveControl serves one control connection; onQuit is called after the
// reply to Control.Quit is written, and when the connection ends.
function serveControl(sock, onQuit) {
  const c = new ControlConn(sock, onQuit);
  sock.on('data', (chunk) => {
    try {
      c.push(chunk);
    } catch (err) {
      c.end();
    }
  });
  sock.on('error', () => c.end());
  sock.on('close', () => c.end());
}

class ControlConn {
  constructor(sock, onQuit) {
    this.sock = sock;
    this.onQuit = onQuit;
    this.buf = Buffer.alloc(0); // yamux bytes not parsed yet
    this.input = Buffer.alloc(0); // stream 1 bytes not parsed yet
    this.reply = Buffer.alloc(0); // replies waiting for the dispatcher's window
    this.credit = YAMUX_WINDOW;
    this.unacked = new Map();
    this.opened = new Set();
    this.out = [];
    this.inCall = false;
    this.method = '';
    this.seq = 0;
    this.typesSent = false;
    this.quitting = false;
    this.ended = false;
  }

  end() {
    if (this.ended) return;
    this.ended = true;
    this.sock.destroy();
    this.onQuit();
  }

  push(chunk) {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    while (!this.ended && this.buf.length >= YAMUX_HEADER) {
      const h = this.buf;
      if (h[0] !== 0) throw new Error(`yamux version ${h[0]}`);
      const type = h[1];
      const flags = h.readUInt16BE(2);
      const id = h.readUInt32BE(4);
      const length = h.readUInt32BE(8);
      let used = YAMUX_HEADER;
      switch (type) {
        case DATA:
          if (h.length < YAMUX_HEADER + length) return;
          this.data(id, flags, h.subarray(YAMUX_HEADER, YAMUX_HEADER + length));
          used += length;
          break;
        case WINDOW_UPDATE:
          this.windowUpdate(id, flags, length);
          break;
        case PING:
          if (flags & SYN) this.out.push(yamux(PING, ACK, 0, length));
          break;
        case GO_AWAY:
          this.flush();
          this.end();
          return;
        default:
          throw new Error(`yamux frame type ${type}`);
      }
      this.buf = this.buf.subarray(used);
      this.flush();
      if (this.quitting) {
        this.quitting = false;
        this.onQuit();
      }
    }
  }

  open(id, flags) {
    if (!(flags & SYN) || this.opened.has(id)) return;
    if (id % 2 === 0 || this.opened.size >= 16) throw new Error(`yamux stream ${id} refused`);
    this.opened.add(id);
    this.out.push(yamux(WINDOW_UPDATE, ACK, id, 0));
  }

  windowUpdate(id, flags, n) {
    this.open(id, flags);
    if (id === CONTROL_STREAM) {
      this.credit += n;
      if (flags & (FIN | RST)) throw new Error('control stream closed');
    }
  }

  data(id, flags, bytes) {
    this.open(id, flags);
    const unacked = this.unacked.get(id) || 0;
    if (bytes.length > YAMUX_WINDOW - unacked) throw new Error(`yamux stream ${id}: data beyond the window`);
    if (id === CONTROL_STREAM) {
      this.input = Buffer.concat([this.input, bytes]);
      this.calls();
    }
    // Give the window back once half of it is used, as yamux does.
    const used = unacked + bytes.length;
    if (used >= YAMUX_WINDOW / 2) {
      this.out.push(yamux(WINDOW_UPDATE, 0, id, used));
      this.unacked.set(id, 0);
    } else {
      this.unacked.set(id, used);
    }
    if (id === CONTROL_STREAM && flags & (FIN | RST)) throw new Error('control stream closed');
  }

  // calls parses the complete gob messages received on the control stream:
  // each call is a header (struct Request {ServiceMethod string; Seq
  // uint64}) and an argument, which is ignored; type definitions are
  // skipped.
  calls() {
    while (this.input.length > 0) {
      const m = gobUint(this.input, 0);
      if (!m) {
        if (this.input.length > 9) throw new Error('gob: bad message length');
        return;
      }
      const [size, k] = m;
      if (size === 0 || size > MAX_MESSAGE) throw new Error(`gob: message of ${size} bytes`);
      if (this.input.length - k < size) return;
      const msg = this.input.subarray(k, k + size);
      this.input = this.input.subarray(k + size);
      this.message(msg);
    }
  }

  message(msg) {
    const t = gobUint(msg, 0);
    if (!t) throw new Error('gob: bad type id');
    if (t[0] & 1) return; // a negative type id: a type definition
    if (this.inCall) {
      this.inCall = false;
      this.answer();
      return;
    }
    const [method, seq] = gobRequest(msg, t[1]);
    if (this.reply.length > MAX_REPLIES) throw new Error('replies not taken');
    this.inCall = true;
    this.method = method;
    this.seq = seq;
  }

  answer() {
    let errText = '';
    switch (this.method) {
      case 'Control.Ping':
        break;
      case 'Control.Quit':
        this.quitting = true;
        break;
      case 'Dispenser.Dispense':
        errText = 'unknown plugin type';
        break;
      default:
        errText = 'rpc: can\'t find service ' + this.method;
    }
    const parts = [];
    if (!this.typesSent) parts.push(GOB_RESPONSE_TYPE);
    // A value of type 64: field deltas count from the previous field
    // present; zero values are not sent; 0 ends the struct.
    const v = [0xff, 0x80, 0x01, ...gobString(this.method)];
    let delta = 2;
    if (this.seq !== 0) {
      v.push(0x01, ...appendGobUint(this.seq));
      delta = 1;
    }
    if (errText) v.push(...appendGobUint(delta), ...gobString(errText));
    v.push(0x00);
    parts.push(Buffer.from(appendGobUint(v.length)), Buffer.from(v));
    if (!this.typesSent) {
      parts.push(GOB_EMPTY_TYPE);
      this.typesSent = true;
    }
    parts.push(GOB_EMPTY_VALUE);
    this.reply = Buffer.concat([this.reply, ...parts]);
  }

  // flush writes the pending frames and as much of the replies as the
  // dispatcher's window takes.
  flush() {
    const n = Math.min(this.reply.length, this.credit);
    if (n > 0) {
      this.out.push(yamux(DATA, 0, CONTROL_STREAM, n), this.reply.subarray(0, n));
      this.reply = this.reply.subarray(n);
      this.credit -= n;
    }
    if (this.out.length === 0) return;
    this.sock.write(Buffer.concat(this.out));
    this.out = [];
  }
}

function yamux(type, flags, id, length) {
  const b = Buffer.alloc(YAMUX_HEADER);
  b[1] = type;
  b.writeUInt16BE(flags, 2);
  b.writeUInt32BE(id, 4);
  b.writeUInt32BE(length, 8);
  return b;
}

// gobUint decodes gob's unsigned integer at b[off]: below 128, one byte;
// otherwise the byte count, negated, then the value big-endian. It returns
// [value, bytes used], or null if b is too short or malformed.
function gobUint(b, off) {
  if (off >= b.length) return null;
  const first = b[off];
  if (first < 0x80) return [first, 1];
  const n = 256 - first;
  if (n > 8 || b.length < off + 1 + n) return null;
  let v = 0;
  for (let i = 0; i < n; i++) v = v * 256 + b[off + 1 + i];
  return [v, 1 + n];
}

function appendGobUint(v) {
  if (v < 0x80) return [v];
  const bytes = [];
  for (let x = v; x > 0; x = Math.floor(x / 256)) bytes.unshift(x % 256);
  return [256 - bytes.length, ...bytes];
}

function gobString(s) {
  const b = Buffer.from(s);
  return [...appendGobUint(b.length), ...b];
}

// gobRequest reads a net/rpc Request value: ServiceMethod (field 0) and Seq
// (field 1).
function gobRequest(b, off) {
  let field = -1;
  let method = '';
  let seq = 0;
  for (;;) {
    const d = gobUint(b, off);
    if (!d) throw new Error('gob: truncated request header');
    off += d[1];
    if (d[0] === 0) return [method, seq];
    if (d[0] > 2) throw new Error(`gob: request header field delta ${d[0]}`);
    field += d[0];
    if (field === 0) {
      const n = gobUint(b, off);
      if (!n || b.length - off - n[1] < n[0]) throw new Error('gob: truncated method name');
      method = b.toString('utf8', off + n[1], off + n[1] + n[0]);
      off += n[1] + n[0];
    } else if (field === 1) {
      const s = gobUint(b, off);
      if (!s) throw new Error('gob: truncated sequence number');
      seq = s[0];
      off += s[1];
    } else {
      throw new Error(`gob: request header field ${field}`);
    }
  }
}

// removeSocket unlinks the control socket when the process exits.
function removeSocketAtExit(p) {
  process.once('exit', () => {
    try {
      fs.unlinkSync(p);
    } catch {
      // already gone
    }
  });
}

module.exports = { listenControl, serveControl, removeSocketAtExit };
