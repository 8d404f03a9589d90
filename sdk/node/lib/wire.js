'use strict';
// The frames of a slot (ipc/PROTOCOL.md sections 3, 6 and 7): a 4-byte
// big-endian length, a kind byte, and one msgpack array, encoded and
// decoded with @msgpack/msgpack. Decoding checks every payload against its
// kind's layout: anything else is a protocol violation, after which the
// slot cannot be trusted.

// The package's own single-file build, the same sources minified: its
// CommonJS build is eleven modules, and finding and loading each one is a
// large part of a oneshot worker's start.
let Encoder;
let Decoder;
try {
  ({ Encoder, Decoder } = require('@msgpack/msgpack/dist.umd/msgpack.min.js'));
} catch {
  ({ Encoder, Decoder } = require('@msgpack/msgpack'));
}

const Kind = Object.freeze({
  REQUEST: 1,
  BODY: 2,
  END: 3,
  RESPONSE: 4,
  CANCEL: 5,
  PING: 6,
  PONG: 7,
  WINDOW: 8,
  ABORT: 9,
  INFORMATIONAL: 10,
  WITHDRAW: 11,
  WITHDRAWN: 12,
});

const DEFAULT_MAX_FRAME = 1 << 20;
const MIN_MAX_FRAME = (64 << 10) + (64 << 10);
const CHUNK_SIZE = 64 << 10;
const WIDE_CHUNK_SIZE = 256 << 10;
const WIDE_CHUNK_MAX_FRAME = WIDE_CHUNK_SIZE + (64 << 10);
const WINDOW = 256 << 10;
const WIDE_WINDOW = 1 << 20;
const MAX_DEPTH = 64;

// A protocol violation in a frame the dispatcher sent (PROTOCOL.md 7).
class ProtocolError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ProtocolError';
  }
}

// A header named __proto__ is legal HTTP; the decoder refuses that key in
// the plain objects it builds maps into, so keys decode through this
// stand-in (NUL cannot occur in a field name) and are restored in
// headerList.
const PROTO_KEY = '\u0000__proto__';

const keyDecoder = {
  canBeCached: () => true,
  decode(bytes, offset, length) {
    const s = utf8(bytes, offset, offset + length);
    return s === '__proto__' ? PROTO_KEY : s;
  },
};

// utf8 decodes bytes[start:end] natively. FrameReader decodes Buffers, so
// the decoder's byte arrays are Buffers; a plain Uint8Array is viewed as one.
function utf8(bytes, start, end) {
  if (Buffer.isBuffer(bytes)) return bytes.utf8Slice(start, end);
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).utf8Slice(start, end);
}

// Keys sent as bin (a str may always arrive as bin).
function mapKeyConverter(key) {
  if (typeof key === 'string' || typeof key === 'number') return key;
  if (key instanceof Uint8Array) return keyDecoder.decode(key, 0, key.length);
  throw new ProtocolError('map key of type ' + typeof key);
}

const EMPTY = Buffer.alloc(0);

// FrameReader splits a slot's byte stream into frames. It never reads the
// payload of a frame over the limit: push throws as soon as the length is
// known.
class FrameReader {
  constructor(maxFrame) {
    this.maxFrame = maxFrame;
    // Strings come back as bytes (rawStrings), decoded natively by str():
    // the protocol accepts str and bin alike in either kind of field.
    this.decoder = new Decoder({
      rawStrings: true,
      keyDecoder,
      mapKeyConverter,
      maxStrLength: maxFrame,
      maxBinLength: maxFrame,
      maxArrayLength: maxFrame,
      maxMapLength: maxFrame,
      maxExtLength: maxFrame,
    });
    this.pending = []; // chunks of an incomplete frame
    this.pendingLength = 0;
    this.need = 0; // bytes of the incomplete frame, header included, once known
  }

  // push takes the next bytes of the stream and calls onFrame(kind, payload)
  // for each complete frame, in order. It throws a ProtocolError for a bad
  // length, and whatever onFrame throws.
  push(chunk, onFrame) {
    let buf = chunk;
    if (this.pendingLength > 0) {
      this.pending.push(chunk);
      this.pendingLength += chunk.length;
      if (this.pendingLength < 4 || (this.need > 0 && this.pendingLength < this.need)) return;
      buf = Buffer.concat(this.pending, this.pendingLength);
      this.pending = [];
      this.pendingLength = 0;
      this.need = 0;
    }
    let off = 0;
    while (buf.length - off >= 4) {
      const n = buf.readUInt32BE(off);
      if (n === 0) throw new ProtocolError('frame of length 0');
      if (n > this.maxFrame) throw new ProtocolError(`frame of ${n} bytes, over the limit of ${this.maxFrame}`);
      if (buf.length - off - 4 < n) {
        this.need = n + 4;
        break;
      }
      const kind = buf[off + 4];
      const payload = buf.subarray(off + 5, off + 4 + n);
      off += 4 + n;
      onFrame(kind, payload);
    }
    if (off < buf.length) {
      const rest = buf.subarray(off);
      this.pending.push(rest);
      this.pendingLength = rest.length;
    }
  }

  // decode returns the frame's payload as an object whose fields depend on
  // its kind, or throws a ProtocolError.
  decode(kind, payload) {
    let a;
    switch (kind) {
      case Kind.REQUEST:
      case Kind.BODY:
      case Kind.END:
      case Kind.CANCEL:
      case Kind.PING:
      case Kind.ABORT:
      case Kind.WITHDRAW:
        break;
      case Kind.RESPONSE:
      case Kind.PONG:
      case Kind.WINDOW:
      case Kind.INFORMATIONAL:
      case Kind.WITHDRAWN:
        throw new ProtocolError(`frame kind ${kind} is only sent by a worker`);
      default:
        throw new ProtocolError(`unknown frame kind ${kind}`);
    }
    try {
      a = this.decoder.decode(payload);
    } catch (err) {
      throw new ProtocolError(`kind ${kind}: malformed msgpack: ${err.message}`);
    }
    if (!Array.isArray(a)) throw new ProtocolError(`kind ${kind}: payload is not an array`);
    const need = kind === Kind.REQUEST ? 11 : kind === Kind.CANCEL || kind === Kind.PING || kind === Kind.WITHDRAW ? 1 : 2;
    if (a.length < need) throw new ProtocolError(`kind ${kind}: ${a.length} elements, want at least ${need}`);
    const id = uint(a[0], 'id');
    switch (kind) {
      case Kind.REQUEST:
        return {
          kind,
          id,
          method: str(a[1], 'method'),
          uri: str(a[2], 'uri'),
          proto: str(a[3], 'proto'),
          header: headerList(a[4], 'header'),
          host: str(a[5], 'host'),
          remoteAddr: str(a[6], 'remote_addr'),
          contentLength: int(a[7], 'content_length'),
          requestId: str(a[8], 'request_id'),
          body: bin(a[9], 'body'),
          eof: bool(a[10], 'eof'),
          cont: a.length > 11 ? bool(a[11], 'continue') : false,
          timeoutMs: a.length > 12 ? timeoutMs(a[12]) : 0,
        };
      case Kind.BODY:
        return { kind, id, data: bin(a[1], 'data') };
      case Kind.END:
        return { kind, id, trailer: headerList(a[1], 'trailer') };
      case Kind.ABORT:
        return { kind, id, reason: str(a[1], 'reason') };
      default:
        return { kind, id };
    }
  }
}

function uint(v, what) {
  if (Number.isSafeInteger(v) && v >= 0) return v;
  throw new ProtocolError(`${what}: want an unsigned integer, got ${typeName(v)}`);
}

// MAX_TIMEOUT_MS is the largest timeout_ms a 64-bit count of nanoseconds
// holds: a larger one is a violation (PROTOCOL.md 3.4).
const MAX_TIMEOUT_MS = 9223372036854;

function timeoutMs(v) {
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= MAX_TIMEOUT_MS) return v;
  if (typeof v === 'number' && Number.isInteger(v) && v > MAX_TIMEOUT_MS) throw new ProtocolError(`timeout_ms: ${v} is over ${MAX_TIMEOUT_MS}`);
  throw new ProtocolError(`timeout_ms: want an unsigned integer, got ${typeName(v)}`);
}

function int(v, what) {
  if (Number.isSafeInteger(v)) return v;
  throw new ProtocolError(`${what}: want an integer, got ${typeName(v)}`);
}

function bool(v, what) {
  if (typeof v === 'boolean') return v;
  throw new ProtocolError(`${what}: want a boolean, got ${typeName(v)}`);
}

// str accepts str, bin and nil (PROTOCOL.md 3.2).
function str(v, what) {
  if (v instanceof Uint8Array) return utf8(v, 0, v.length);
  if (typeof v === 'string') return v;
  if (v === null) return '';
  throw new ProtocolError(`${what}: want a string, got ${typeName(v)}`);
}

// bin accepts bin, str and nil.
function bin(v, what) {
  if (v instanceof Uint8Array) return Buffer.isBuffer(v) ? v : Buffer.from(v.buffer, v.byteOffset, v.length);
  if (typeof v === 'string') return Buffer.from(v);
  if (v === null) return EMPTY;
  throw new ProtocolError(`${what}: want bytes, got ${typeName(v)}`);
}

// headerList turns a header map into a flat [name, value, name, value...]
// list, or null for nil.
function headerList(v, what) {
  if (v === null) return null;
  if (typeof v !== 'object' || Array.isArray(v) || v instanceof Uint8Array || Object.getPrototypeOf(v) !== Object.prototype) {
    throw new ProtocolError(`${what}: want a map, got ${typeName(v)}`);
  }
  const list = [];
  for (const k of Object.keys(v)) {
    const name = k === PROTO_KEY ? '__proto__' : k;
    const values = v[k];
    if (values === null) continue;
    if (!Array.isArray(values)) throw new ProtocolError(`${what} ${JSON.stringify(name)}: want an array of strings, got ${typeName(values)}`);
    for (const value of values) list.push(name, str(value, `${what} ${JSON.stringify(name)}`));
  }
  return list;
}

function typeName(v) {
  if (v === null) return 'nil';
  if (Array.isArray(v)) return 'an array';
  if (v instanceof Uint8Array) return 'bytes';
  if (typeof v === 'number') return Number.isInteger(v) ? 'an integer' : 'a float';
  return typeof v;
}

// FrameWriter encodes the frames a worker sends. Its encoder's buffer is
// reused: each frame is copied out into a buffer of its own.
class FrameWriter {
  constructor() {
    this.encoder = new Encoder({ initialBufferSize: 4096 });
  }

  frame(kind, value) {
    const payload = this.encoder.encodeSharedRef(value);
    const f = Buffer.allocUnsafe(5 + payload.length);
    f.writeUInt32BE(payload.length + 1, 0);
    f[4] = kind;
    f.set(payload, 5);
    return f;
  }

  response(id, status, header, body, eof, trailer) {
    return this.frame(Kind.RESPONSE, [id, status, header, body, eof, trailer]);
  }

  informational(id, status, header) {
    return this.frame(Kind.INFORMATIONAL, [id, status, header]);
  }

  body(id, data) {
    return this.frame(Kind.BODY, [id, data]);
  }

  end(id, trailer) {
    return this.frame(Kind.END, [id, trailer]);
  }

  abort(id, reason) {
    return this.frame(Kind.ABORT, [id, reason]);
  }

  pong(id, features) {
    return this.frame(Kind.PONG, features.length > 0 ? [id, features] : [id]);
  }

  window(id, n) {
    return this.frame(Kind.WINDOW, [id, n]);
  }

  withdrawn(id) {
    return this.frame(Kind.WITHDRAWN, [id]);
  }
}

module.exports = {
  Kind,
  ProtocolError,
  FrameReader,
  FrameWriter,
  DEFAULT_MAX_FRAME,
  MIN_MAX_FRAME,
  CHUNK_SIZE,
  WIDE_CHUNK_SIZE,
  WIDE_CHUNK_MAX_FRAME,
  WINDOW,
  WIDE_WINDOW,
  MAX_DEPTH,
};
