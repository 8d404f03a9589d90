'use strict';
// The objects a handler gets: a real http.IncomingMessage and
// http.ServerResponse, as http.createServer passes them, whose I/O goes to
// the exchange instead of a TCP socket. What differs from Node's own is
// set as own properties of each object, not in a subclass: Express (and
// other frameworks) replace the prototype of req and res with their own,
// built on http.IncomingMessage.prototype and http.ServerResponse.prototype,
// which would drop a subclass's methods. Everything else (setHeader,
// getHeader, headersSent, the Readable machinery...) is Node's.

const http = require('http');
const { EventEmitter } = require('events');

const kExchange = Symbol('dispatcher.exchange');

// The symbol behind OutgoingMessage's writableNeedDrain, which
// stream.pipe() reads: found by its description, as Node does not export
// it; without it writableNeedDrain stays false, as for a fresh response.
const kNeedDrain = Object.getOwnPropertySymbols(new http.OutgoingMessage()).find((s) => s.description === 'kNeedDrain');

// ExchangeSocket stands for the client's connection: its address, and
// destroy(), which cuts it (the client sees a reset, or a 502 if nothing was
// sent), as destroying a real socket does. Raw writes are not possible: the
// dispatcher owns the connection.
class ExchangeSocket extends EventEmitter {
  constructor(ex) {
    super();
    this[kExchange] = ex;
    this.readable = true;
    this.writable = true;
    this.destroyed = false;
    this._httpMessage = null;
  }

  get remoteAddress() {
    return splitAddr(this[kExchange].remoteAddr)[0];
  }

  get remotePort() {
    return splitAddr(this[kExchange].remoteAddr)[1];
  }

  get remoteFamily() {
    const a = this.remoteAddress;
    return a === undefined ? undefined : a.includes(':') ? 'IPv6' : 'IPv4';
  }

  get readableHighWaterMark() {
    return 64 << 10;
  }

  get writableLength() {
    return this[kExchange].writableLength();
  }

  get writableCorked() {
    return 0;
  }

  address() {
    return {};
  }

  setTimeout(ms, cb) {
    if (cb) this.once('timeout', cb);
    return this;
  }

  setNoDelay() {
    return this;
  }

  setKeepAlive() {
    return this;
  }

  ref() {
    return this;
  }

  unref() {
    return this;
  }

  cork() {}

  uncork() {}

  pause() {
    return this;
  }

  resume() {
    return this;
  }

  write(chunk, encoding, cb) {
    const err = codeError(Error, 'ERR_STREAM_DESTROYED', 'writing to the client\'s connection directly is not supported under the dispatcher');
    process.nextTick(typeof encoding === 'function' ? encoding : cb || noop, err);
    return false;
  }

  end() {
    return this.destroy();
  }

  destroy(err) {
    this[kExchange].cut(err);
    return this;
  }

  // closed marks the connection gone; 'close' follows, as for a socket.
  closed() {
    if (this.destroyed) return;
    this.destroyed = true;
    this.readable = false;
    this.writable = false;
    this.emit('close', false);
  }
}

function noop() {}

// splitAddr splits "ip:port" or "[ip6]:port".
function splitAddr(addr) {
  const i = addr.lastIndexOf(':');
  if (i < 0) return [addr || undefined, undefined];
  let host = addr.slice(0, i);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  const port = Number(addr.slice(i + 1));
  return [host, Number.isInteger(port) ? port : undefined];
}

// newRequest builds the IncomingMessage for a request frame.
function newRequest(ex, f) {
  const req = new http.IncomingMessage(ex.socket);
  req[kExchange] = ex;
  req._read = readBody;
  req._destroy = destroyBody;
  req.method = f.method;
  req.url = f.uri;
  const v = /^HTTP\/(\d)\.(\d)$/.exec(f.proto);
  req.httpVersionMajor = v ? Number(v[1]) : 1;
  req.httpVersionMinor = v ? Number(v[2]) : 1;
  req.httpVersion = `${req.httpVersionMajor}.${req.httpVersionMinor}`;
  // Node's header fields: Host (which travels apart), the fields as
  // received, and what the dispatcher's HTTP server took out of them.
  const raw = f.host ? ['Host', f.host] : [];
  let hasLength = false;
  let hasEncoding = false;
  let hasID = false;
  const list = f.header;
  if (list) {
    for (let i = 0; i < list.length; i += 2) {
      const name = list[i];
      raw.push(name, list[i + 1]);
      if (name.length === 14 && name.toLowerCase() === 'content-length') hasLength = true;
      else if (name.length === 17 && name.toLowerCase() === 'transfer-encoding') hasEncoding = true;
      else if (name.length === 12 && name.toLowerCase() === 'x-request-id') hasID = true;
    }
  }
  if (f.contentLength > 0 && !hasLength) raw.push('Content-Length', String(f.contentLength));
  if (f.contentLength < 0 && !hasEncoding) raw.push('Transfer-Encoding', 'chunked');
  if (f.requestId && !hasID) raw.push('X-Request-Id', f.requestId);
  req.rawHeaders = raw;
  const headers = {};
  for (let i = 0; i < raw.length; i += 2) req._addHeaderLine(raw[i], raw[i + 1], headers);
  req.headers = headers;
  return req;
}

// readBody is the request's Readable._read: the handler wants more of the
// body.
function readBody() {
  if (!this._consuming) {
    this._readableState.readingMore = false;
    this._consuming = true;
  }
  this[kExchange].bodyWanted();
}

// destroyBody is the request's Readable._destroy. As in Node, a request
// destroyed before its end is aborted, which cuts the client's connection
// unless the exchange is over.
function destroyBody(err, cb) {
  const ex = this[kExchange];
  if ((!this.readableEnded || !this.complete) && !ex.quiet) {
    this.aborted = true;
    this.emit('aborted');
    ex.cut(err);
  }
  // An error with no listener is not an uncaught exception, as in Node.
  process.nextTick(cb, this.listenerCount('error') > 0 ? err : null);
}

// newResponse builds the ServerResponse for req.
function newResponse(ex, req) {
  const res = new http.ServerResponse(req);
  res[kExchange] = ex;
  res.socket = ex.socket;
  ex.socket._httpMessage = res;
  res.writeHead = writeHead;
  res.write = write;
  res.end = end;
  res.flushHeaders = flushHeaders;
  res.addTrailers = addTrailers;
  res.writeContinue = writeContinue;
  res.writeProcessing = writeProcessing;
  res.writeEarlyHints = writeEarlyHints;
  return res;
}

function writeHead(statusCode, reason, obj) {
  if (this._header) {
    throw codeError(Error, 'ERR_HTTP_HEADERS_SENT', 'Cannot write headers after they are sent to the client');
  }
  const code = statusCode | 0;
  if (code < 100 || code > 999) {
    throw codeError(RangeError, 'ERR_HTTP_INVALID_STATUS_CODE', `Invalid status code: ${statusCode}`);
  }
  if (typeof reason !== 'string') obj ??= reason;
  if (code < 200 && code !== 101) {
    // An informational response goes out at once, with the header fields
    // set so far and those given; the final status follows.
    const h = headerMap(this);
    for (const [k, v] of headerPairs(obj)) {
      http.validateHeaderName(k);
      http.validateHeaderValue(k, v);
      addField(h, k, v);
    }
    this[kExchange].informational(code, h);
    return this;
  }
  if (typeof reason === 'string') this.statusMessage = reason;
  else this.statusMessage ||= http.STATUS_CODES[code] || 'unknown';
  for (const [k, v] of headerPairs(obj)) {
    if (Array.isArray(obj)) this.appendHeader(k, v);
    else if (k) this.setHeader(k, v);
  }
  this.statusCode = code;
  if (code === 204 || code === 304) this._hasBody = false;
  // As Node: the head is fixed now (setHeader throws), and sent with the
  // first bytes of the body, or alone at flushHeaders().
  this._header = `HTTP/1.1 ${code} ${this.statusMessage}\r\n\r\n`;
  return this;
}

// headerPairs lists writeHead's header argument: an object, or an array of
// [name, value] pairs or of alternating names and values.
function headerPairs(obj) {
  if (!obj) return [];
  if (Array.isArray(obj)) {
    if (obj.length > 0 && Array.isArray(obj[0])) return obj;
    const pairs = [];
    for (let i = 0; i + 1 < obj.length; i += 2) pairs.push([obj[i], obj[i + 1]]);
    return pairs;
  }
  return Object.keys(obj).map((k) => [k, obj[k]]);
}

function write(chunk, encoding, cb) {
  if (typeof encoding === 'function') {
    cb = encoding;
    encoding = null;
  }
  const ret = writeBody(this, chunk, encoding, cb, false);
  if (!ret && kNeedDrain) this[kNeedDrain] = true;
  return ret;
}

function writeBody(res, chunk, encoding, cb, last) {
  if (chunk === null) throw codeError(TypeError, 'ERR_STREAM_NULL_VALUES', 'May not write null values to stream');
  if (typeof chunk !== 'string' && !(chunk instanceof Uint8Array)) {
    throw codeError(TypeError, 'ERR_INVALID_ARG_TYPE', `The "chunk" argument must be of type string or an instance of Buffer or Uint8Array. Received ${typeof chunk}`);
  }
  if (res.finished || res.destroyed) {
    const err = res.finished
      ? codeError(Error, 'ERR_STREAM_WRITE_AFTER_END', 'write after end')
      : codeError(Error, 'ERR_STREAM_DESTROYED', 'Cannot call write after a stream was destroyed');
    process.nextTick(() => {
      if (typeof cb === 'function') cb(err);
      if (!res.destroyed) res.emit('error', err);
    });
    return false;
  }
  let buf;
  if (typeof chunk === 'string') buf = Buffer.from(chunk, encoding || 'utf8');
  else buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  if (!res._header) {
    if (last) res._contentLength = buf.length;
    res._implicitHeader();
  }
  if (!res._hasBody) {
    if (typeof cb === 'function') process.nextTick(cb);
    return true;
  }
  return res[kExchange].writeBody(buf, typeof cb === 'function' ? cb : null, last);
}

function end(chunk, encoding, cb) {
  if (typeof chunk === 'function') {
    cb = chunk;
    chunk = null;
  } else if (typeof encoding === 'function') {
    cb = encoding;
    encoding = null;
  }
  if (chunk) {
    if (this.finished) {
      writeBody(this, chunk, encoding, cb, true);
      return this;
    }
    writeBody(this, chunk, encoding, null, true);
  } else if (this.finished) {
    if (typeof cb === 'function') {
      if (!this.writableFinished) this.once('finish', cb);
      else cb(codeError(Error, 'ERR_STREAM_ALREADY_FINISHED', 'Cannot call end after a stream was finished'));
    }
    return this;
  } else if (!this._header) {
    this._contentLength = 0;
    this._implicitHeader();
  }
  if (typeof cb === 'function') this.once('finish', cb);
  this.finished = true;
  this[kExchange].endResponse();
  return this;
}

function flushHeaders() {
  if (!this._header) this._implicitHeader();
  this[kExchange].flush(false);
}

function addTrailers(headers) {
  const t = (this[kExchange].trailers ??= Object.create(null));
  for (const [k, v] of headerPairs(headers)) {
    http.validateHeaderName(k);
    http.validateHeaderValue(k, v);
    addField(t, k, v);
  }
}

function writeContinue(cb) {
  // The dispatcher answers Expect: 100-continue itself, when the handler
  // first reads the body.
  if (typeof cb === 'function') process.nextTick(cb);
}

function writeProcessing(cb) {
  this[kExchange].informational(102, null);
  if (typeof cb === 'function') process.nextTick(cb);
}

function writeEarlyHints(hints, cb) {
  if (hints === null || typeof hints !== 'object') {
    throw codeError(TypeError, 'ERR_INVALID_ARG_TYPE', 'The "hints" argument must be of type object');
  }
  if (hints.link !== null && hints.link !== undefined) {
    const h = Object.create(null);
    const link = Array.isArray(hints.link) ? hints.link.join(', ') : String(hints.link);
    if (link.length > 0) {
      addField(h, 'Link', link);
      for (const k of Object.keys(hints)) {
        if (k !== 'link') addField(h, k, hints[k]);
      }
      this[kExchange].informational(103, h);
    }
  }
  if (typeof cb === 'function') process.nextTick(cb);
}

// headerMap is the response's header fields as the protocol carries them:
// names in Go's canonical form, each with its list of values; null if none.
function headerMap(res) {
  const all = res.getHeaders();
  let h = null;
  for (const k in all) {
    h ??= Object.create(null);
    addField(h, k, all[k]);
  }
  return h;
}

function addField(h, name, value) {
  const key = canonical(name);
  const values = Array.isArray(value) ? value.map(String) : [String(value)];
  h[key] = h[key] ? h[key].concat(values) : values;
}

// canonical is Go's CanonicalMIMEHeaderKey: "content-type" becomes
// "Content-Type"; a name with a byte outside the token set stays as it is.
const canonicalCache = new Map();
function canonical(name) {
  let c = canonicalCache.get(name);
  if (c !== undefined) return c;
  c = name;
  if (/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(name)) {
    c = name.toLowerCase().replace(/(^|-)([a-z])/g, (m, dash, ch) => dash + ch.toUpperCase());
  }
  if (canonicalCache.size < 1024) canonicalCache.set(name, c);
  return c;
}

function codeError(Type, code, message) {
  const err = new Type(message);
  err.code = code;
  return err;
}

module.exports = { kExchange, kNeedDrain, ExchangeSocket, newRequest, newResponse, headerMap, addField, canonical, codeError };
