'use strict';
// A slot: one inherited socket, serving one exchange at a time (ipc/PROTOCOL.md
// 3-5). Its reader never stops: body, cancel and ping frames are handled as
// they come, whatever the handler does. Complete requests that arrive while
// an exchange runs wait in line (pipelining, up to the announced depth) and
// run in order, each once the previous response's last frame is written.

const net = require('net');
const { Kind, ProtocolError, FrameReader, CHUNK_SIZE, WINDOW } = require('./wire');
const { kExchange, kNeedDrain, ExchangeSocket, newRequest, newResponse, headerMap, codeError } = require('./http');

// Response body bytes buffered before write() asks the handler to wait for
// 'drain', as http.ServerResponse's highWaterMark.
const HIGH_WATER_MARK = 16 << 10;

// The longest delay setTimeout takes; a deadline further away never comes.
const MAX_TIMER_MS = 2 ** 31 - 1;

// Exchange states.
const QUEUED = 0; // waiting for its turn
const RUNNING = 1; // its handler has it
const ENDING = 2; // its last frame is written, not yet flushed
const DONE = 3;

class Slot {
  constructor(worker, fd) {
    this.worker = worker;
    this.fd = fd;
    this.socket = new net.Socket({ fd, readable: true, writable: true });
    this.reader = new FrameReader(worker.maxFrame);
    this.cur = null;
    this.queue = [];
    this.closed = false;
    this.socket.on('data', (chunk) => this.onData(chunk));
    this.socket.on('end', () => this.close(null));
    this.socket.on('error', (err) => this.close(err));
    this.socket.on('close', () => this.close(null));
    this.socket.on('drain', () => {
      if (this.cur) this.worker.within(this.cur, drained);
    });
  }

  onData(chunk) {
    try {
      this.reader.push(chunk, (kind, payload) => this.frame(this.reader.decode(kind, payload)));
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err;
      this.worker.log.error(`slot ${this.fd}: protocol violation: ${err.message}; closing the slot`);
      this.close(err);
    }
  }

  frame(f) {
    if (this.closed) return;
    switch (f.kind) {
      case Kind.PING:
        this.send(this.worker.pong(f.id));
        return;
      case Kind.REQUEST:
        this.start(f);
        return;
      case Kind.WITHDRAW:
        this.withdraw(f.id);
        return;
    }
    // Frames of an exchange that is over are late: harmless. The others
    // reach the handler's code (its listeners on req and res), in the
    // exchange's context.
    const ex = this.find(f.id);
    if (ex && (f.kind === Kind.CANCEL || ex.streamed)) this.worker.within(ex, exchangeFrame, f);
  }

  // find returns exchange id, running or queued, or null.
  find(id) {
    if (this.cur && this.cur.id === id) return this.cur;
    for (const ex of this.queue) if (ex.id === id) return ex;
    return null;
  }

  start(f) {
    const ex = new Exchange(this, f);
    if (!this.cur) {
      this.cur = ex;
      ex.run();
      return;
    }
    // Pipelining rules (PROTOCOL.md 4.5): at most depth exchanges not yet
    // answered, and a streamed body only after a response whose end the
    // dispatcher may have seen, with nothing queued between.
    const ending = this.cur.state >= ENDING;
    const room = this.worker.depth - 1 + (ending ? 1 : 0);
    if ((ex.streamed && !(ending && this.queue.length === 0)) || this.queue.length >= room) {
      throw new ProtocolError(`request ${f.id} arrived with ${this.queue.length + 1} exchanges unanswered (depth ${this.worker.depth})`);
    }
    this.queue.push(ex);
  }

  // withdraw gives back a queued request that has not started, as the
  // dispatcher asked (PROTOCOL.md 4.5): out of the line, and a withdrawn
  // frame at once. It is written now, while the frame is read, so it goes
  // out before anything of a request after it in line, which can only
  // start later. A request that started, or is unknown, stays as it is.
  withdraw(id) {
    const i = this.queue.findIndex((ex) => ex.id === id);
    if (i < 0) return;
    const [ex] = this.queue.splice(i, 1);
    ex.state = DONE;
    this.send(this.worker.writer.withdrawn(id));
  }

  // advance runs the next queued exchange once ex's last frame is out.
  advance(ex) {
    if (this.cur !== ex) return;
    this.cur = this.queue.length > 0 ? this.queue.shift() : null;
    if (this.cur) this.cur.run();
  }

  send(buf, cb) {
    return this.socket.write(buf, cb);
  }

  // close ends the slot: at end of stream, on an error, or after a
  // protocol violation (then nothing more is read or written). The
  // exchanges on it are abandoned.
  close(err) {
    if (this.closed) return;
    this.closed = true;
    this.socket.destroy();
    const abandoned = this.cur ? [this.cur, ...this.queue] : this.queue;
    this.cur = null;
    this.queue = [];
    const running = abandoned.filter((ex) => ex.state === RUNNING);
    for (const ex of abandoned) this.worker.within(ex, abandon, err);
    this.worker.slotClosed(running);
  }
}

// Exchange is one request and its response on a slot.
class Exchange {
  constructor(slot, f) {
    const w = slot.worker;
    this.slot = slot;
    this.worker = w;
    this.id = f.id;
    this.frame = f;
    this.requestId = f.requestId;
    this.remoteAddr = f.remoteAddr;
    this.streamed = !f.eof;
    this.state = QUEUED;
    this.cancelled = false;
    this.quiet = false; // the sdk tears the request down: no 'aborted'
    this.req = null;
    this.res = null;
    this.socket = null;
    this.controller = null;
    this.deadlineAt = 0;
    this.timer = null;
    this.trailers = null;
    // The request body (PROTOCOL.md 4.2): bytes the dispatcher sent, bytes
    // given to the request stream, bytes acknowledged; the window; credit
    // owed at the handler's first read (continue).
    this.body = f.eof ? null : [f.body];
    this.bodyDone = f.eof;
    this.bodyTrailer = null;
    this.got = f.body.length;
    this.pushed = 0;
    this.acked = 0;
    this.window = w.window;
    this.owed = f.cont ? this.window : 0;
    // The response body not yet sent.
    this.chunks = [];
    this.size = 0;
    this.callbacks = null;
    this.headSent = false;
    this.scheduled = false;
    this.needDrain = false;
    this.inlinePushed = false;
    this.cancelledReason = null;
  }

  run() {
    if (this.cancelled) {
      // Cancelled while queued: answered in its turn, never started.
      this.state = ENDING;
      this.slot.send(this.worker.writer.abort(this.id, 'cancelled before it started'), () => this.done());
      return;
    }
    this.state = RUNNING;
    const w = this.worker;
    w.inflight++;
    if (this.frame.timeoutMs > 0) {
      this.deadlineAt = Date.now() + this.frame.timeoutMs;
      if (this.frame.timeoutMs <= MAX_TIMER_MS) {
        this.timer = setTimeout(expire, this.frame.timeoutMs, this);
        this.timer.unref();
      }
    }
    if (this.streamed && w.headAck) {
      // Before the handler can act: until this acknowledgement, the
      // dispatcher may send the request to another worker if this one
      // dies. With the wide window it also grants the extra credit.
      const grant = this.frame.cont ? 0 : this.window - WINDOW;
      this.slot.send(w.writer.window(this.id, grant));
    }
    this.socket = new ExchangeSocket(this);
    this.req = newRequest(this, this.frame);
    this.res = newResponse(this, this.req);
    if (this.streamed) this.feed();
    else this.req.complete = true; // its body is pushed at the first read
    w.invoke(this);
  }

  // feed moves what the dispatcher sent of the body into the request
  // stream, and returns credit for what the handler read.
  feed() {
    const req = this.req;
    if (!req || req.destroyed) return;
    for (const data of this.body) {
      if (data.length > 0) {
        this.pushed += data.length;
        req.push(data);
      }
    }
    this.body = [];
    if (this.bodyDone && !req.complete) {
      if (this.bodyTrailer) {
        req.rawTrailers = this.bodyTrailer;
        const t = {};
        for (let i = 0; i < this.bodyTrailer.length; i += 2) req._addHeaderLine(this.bodyTrailer[i], this.bodyTrailer[i + 1], t);
        req.trailers = t;
      }
      req.complete = true;
      req.push(null);
    }
    this.credit();
  }

  credit() {
    if (this.bodyDone || this.owed > 0 || this.state !== RUNNING) return;
    const read = this.pushed - this.req.readableLength - this.acked;
    if (read >= this.window / 4) {
      this.acked += read;
      this.slot.send(this.worker.writer.window(this.id, read));
    }
  }

  // bodyWanted: the handler reads the body (the request's _read).
  bodyWanted() {
    if (!this.streamed) {
      if (!this.inlinePushed) {
        this.inlinePushed = true;
        if (this.frame.body.length > 0) this.req.push(this.frame.body);
        this.req.push(null);
      }
      return;
    }
    if (this.owed > 0 && this.state === RUNNING) {
      // A request marked continue: the dispatcher starts reading the
      // client's body (which sends its 100 Continue) only now.
      const n = this.owed;
      this.owed = 0;
      this.slot.send(this.worker.writer.window(this.id, n));
    }
    this.credit();
  }

  received(data) {
    if (this.bodyDone || this.state > RUNNING) return;
    const unread = this.got - (this.pushed - (this.req ? this.req.readableLength : 0));
    if (unread + data.length > this.window) {
      throw new ProtocolError(`exchange ${this.id}: ${unread + data.length - this.window} body bytes beyond the window`);
    }
    this.got += data.length;
    this.body.push(data);
    this.feed();
  }

  bodyEnded(trailer) {
    if (this.bodyDone || this.state > RUNNING) return;
    this.bodyDone = true;
    this.bodyTrailer = trailer;
    this.feed();
  }

  // bodyAborted: the client's body failed (it went away, or its body went
  // over the dispatcher's limit). As when a client's connection dies under
  // Node's own server, the request and the response are both torn down.
  bodyAborted(reason) {
    if (this.bodyDone || this.state > RUNNING) return;
    this.bodyDone = true;
    if (this.state === QUEUED) {
      this.cancelled = true;
      return;
    }
    this.reset(`request body aborted: ${reason}`);
  }

  // cancel: the dispatcher gave up on the exchange (its client went away,
  // or it refused the response).
  cancel() {
    if (this.state === QUEUED) {
      this.cancelled = true;
      return;
    }
    if (this.state === RUNNING) this.reset('cancelled by the dispatcher');
  }

  // cut: the handler destroyed the response or the client's socket.
  cut(err) {
    if (this.state !== RUNNING) return;
    this.reset(err ? `handler cut the response: ${err.message || err}` : 'handler cut the response');
  }

  // reset ends the exchange with an abort frame, and tells the handler as
  // Node's server does when a client's connection dies: 'aborted' and
  // 'close' on the request, 'close' on the response, the signal aborted.
  reset(reason) {
    this.finishing();
    this.slot.send(this.worker.writer.abort(this.id, reason), () => this.done());
    this.teardown(new Error(reason));
  }

  // abandon: the slot is gone; nothing more can be sent.
  abandon(err) {
    if (this.state === QUEUED || this.state === DONE) {
      this.state = DONE;
      return;
    }
    const wasRunning = this.state === RUNNING;
    this.finishing();
    if (wasRunning) this.teardown(err || new Error('the dispatcher closed the slot'));
    this.done();
  }

  teardown(reason) {
    this.abortSignal(reason);
    const req = this.req;
    if (req && !req.destroyed) {
      const err = codeError(Error, 'ECONNRESET', 'aborted');
      if (!req.readableEnded || !req.complete) {
        req.aborted = true;
        req.emit('aborted');
      }
      this.quiet = true;
      req.destroy(err);
    }
    this.closeResponse();
  }

  // closeResponse emits the response's 'close' and the socket's, once.
  closeResponse() {
    const res = this.res;
    if (res && !res.destroyed) {
      res.destroyed = true;
      res._closed = true;
      res.emit('close');
    }
    if (this.socket) this.socket.closed();
  }

  // fail answers for a handler that threw: a 500 if nothing was sent yet,
  // else an abort, which cuts the client's connection. The worker serves on.
  fail(err) {
    this.worker.log.with({ request_id: this.requestId || undefined }).error(`handler error: ${describe(err)}`, { stack: err instanceof Error ? err.stack : undefined });
    if (this.state !== RUNNING) return;
    this.finishing();
    const w = this.worker.writer;
    const frame = this.headSent
      ? w.abort(this.id, `handler error: ${describe(err)}`)
      : w.response(this.id, 500, { 'Content-Type': ['text/plain; charset=utf-8'], 'X-Content-Type-Options': ['nosniff'] }, Buffer.from('Internal Server Error\n'), true, null);
    this.slot.send(frame, () => this.done());
    this.quiet = true;
    this.abortSignal(err);
    if (this.req && !this.req.destroyed) this.req.destroy();
    this.closeResponse();
  }

  // finishing marks the last frame as being written: from now on the
  // dispatcher may send the next request, and this exchange takes no more
  // frames from the handler.
  finishing() {
    if (this.state === RUNNING) this.worker.inflight--;
    this.state = ENDING;
    this.chunks = [];
    this.size = 0;
    if (this.timer) clearTimeout(this.timer);
  }

  // done: the last frame is flushed. The next request may start.
  done() {
    if (this.state === DONE) return;
    this.state = DONE;
    this.slot.advance(this);
    this.worker.exchangeDone();
  }

  writableLength() {
    return this.size + (this.state <= RUNNING ? this.slot.socket.writableLength : 0);
  }

  // writeBody takes a chunk of the response body. last: end() follows at
  // once.
  writeBody(buf, cb, last) {
    if (this.state !== RUNNING) {
      if (cb) process.nextTick(cb, codeError(Error, 'ERR_STREAM_DESTROYED', 'Cannot call write after a stream was destroyed'));
      return false;
    }
    if (buf.length > 0) {
      this.chunks.push(buf);
      this.size += buf.length;
    }
    if (cb) (this.callbacks ??= []).push(cb);
    if (last) return true;
    if (this.size >= (this.headSent ? this.worker.chunk : CHUNK_SIZE)) {
      this.flush(false);
    } else if (!this.scheduled) {
      // Like Node's socket corking: what the handler writes in one tick
      // goes out together, in as few frames as possible.
      this.scheduled = true;
      process.nextTick(flushTick, this);
    }
    const ok = this.size < HIGH_WATER_MARK && !this.slot.socket.writableNeedDrain;
    if (!ok) this.needDrain = true;
    return ok;
  }

  endResponse() {
    if (this.state !== RUNNING) return;
    this.flush(true);
  }

  // flush sends the head, if not sent yet, and the buffered body; last:
  // the response ends with it. Body frames carry at most the chunk size the
  // dispatcher accepts (the first, in the head, at most CHUNK_SIZE).
  flush(last) {
    if (this.state !== RUNNING) return;
    const w = this.worker.writer;
    const frames = [];
    let ended = false;
    if (!this.headSent) {
      const head = this.head();
      if (!head) return;
      const first = this.take(Math.min(this.size, CHUNK_SIZE));
      ended = last && this.size === 0;
      let f = w.response(this.id, head.status, head.header, first, ended, ended ? this.trailers : null);
      if (f.length > this.worker.maxFrame) {
        // A head of many fields: it goes alone, the body after it.
        ended = false;
        f = w.response(this.id, head.status, head.header, Buffer.alloc(0), false, null);
        if (first.length > 0) this.chunks.unshift(first);
        this.size += first.length;
      }
      if (f.length > this.worker.maxFrame) {
        this.fail(new Error(`response head of ${f.length} bytes, over the frame limit of ${this.worker.maxFrame}`));
        return;
      }
      frames.push(f);
      this.headSent = true;
    }
    while (this.size > 0) frames.push(w.body(this.id, this.take(Math.min(this.size, this.worker.chunk))));
    if (last && !ended) frames.push(w.end(this.id, this.trailers));
    const cbs = this.callbacks;
    this.callbacks = null;
    if (last) this.finishing();
    const sock = this.slot.socket;
    if (frames.length > 1) sock.cork();
    for (let i = 0; i < frames.length - 1; i++) this.slot.send(frames[i]);
    this.slot.send(frames[frames.length - 1], cbs || last ? (err) => {
      if (cbs) for (const cb of cbs) cb(err || undefined);
      if (last) this.finished(err);
    } : undefined);
    if (frames.length > 1) sock.uncork();
    if (!last && this.needDrain && !sock.writableNeedDrain) process.nextTick(() => this.drained());
  }

  // head returns the status and header fields to send, or null (after
  // failing the exchange) if they cannot be sent.
  head() {
    const res = this.res;
    let header;
    try {
      header = headerMap(res);
    } catch (err) {
      this.fail(err);
      return null;
    }
    const length = res._contentLength;
    if (res._hasBody && typeof length === 'number' && !res._removedContLen && !res.hasHeader('content-length') &&
      !res.hasHeader('transfer-encoding') && !res.hasHeader('trailer')) {
      // As Node does for a response given whole to end().
      header ??= Object.create(null);
      header['Content-Length'] = [String(length)];
    }
    return { status: res.statusCode, header };
  }

  take(n) {
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0];
    this.size -= n;
    if (first.length === n) {
      this.chunks.shift();
      return first;
    }
    if (first.length > n) {
      this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const c = this.chunks[0];
      const k = Math.min(c.length, n - off);
      c.copy(out, off, 0, k);
      off += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    return out;
  }

  // finished: the response's last frame is flushed: 'finish', then
  // 'close' (closeFinished).
  finished(err) {
    const res = this.res;
    const req = this.req;
    try {
      if (!err) res.emit('finish');
    } finally {
      this.done();
    }
    process.nextTick(closeFinished, this);
  }

  drained() {
    if (!this.needDrain || this.state !== RUNNING) return;
    this.needDrain = false;
    if (kNeedDrain) this.res[kNeedDrain] = false;
    this.res.emit('drain');
  }

  informational(status, header) {
    if (this.state !== RUNNING || this.headSent || !this.worker.informational) return;
    this.slot.send(this.worker.writer.informational(this.id, status, header));
  }

  // signal returns an AbortSignal aborted when the exchange is torn down
  // (the client went away, the dispatcher gave up, the handler failed) or
  // at its deadline.
  signal() {
    if (this.controller) return this.controller.signal;
    this.controller = new AbortController();
    if (this.cancelledReason) this.controller.abort(this.cancelledReason);
    return this.controller.signal;
  }

  // expired: the deadline passed (timeout_ms, PROTOCOL.md 3.4) before the
  // response's head was sent. As the Go sdk cancels the handler's context,
  // the signal aborts; as Node's server does on a socket timeout, 'timeout'
  // is emitted on req, res and the socket. A handler listening for it (or
  // that answers from the abort in this turn) is in charge of the answer;
  // otherwise the sdk answers 504 and tears the exchange down, as Node's
  // server does at its requestTimeout: the worker serves on, instead of
  // being quarantined at the dispatcher's --timeout, a little later.
  expired() {
    this.timer = null;
    if (this.state !== RUNNING || this.headSent) return;
    this.abortSignal(new DOMException('the request\'s deadline passed', 'TimeoutError'));
    if (this.state !== RUNNING || this.headSent) return;
    const sock = this.socket;
    const handled = [this.req, this.res, sock].map((o) => o && !o.destroyed && o.emit('timeout', sock)).some(Boolean);
    if (handled) return;
    // Promise chains reacting to the abort run first.
    setImmediate(() => {
      if (this.state !== RUNNING || this.headSent) return;
      this.worker.log.with({ request_id: this.requestId || undefined }).warn('the request\'s deadline passed before its response started: answered 504', { timeout_ms: this.frame.timeoutMs });
      this.finishing();
      const header = { 'Content-Type': ['text/plain; charset=utf-8'], 'X-Content-Type-Options': ['nosniff'] };
      this.slot.send(this.worker.writer.response(this.id, 504, header, Buffer.from('Gateway Timeout\n'), true, null), () => this.done());
      this.teardown(this.cancelledReason);
    });
  }

  abortSignal(reason) {
    if (!this.cancelledReason) this.cancelledReason = reason;
    if (this.controller && !this.controller.signal.aborted) this.controller.abort(reason);
  }
}

// exchangeFrame hands ex a frame of its exchange.
function exchangeFrame(ex, f) {
  switch (f.kind) {
    case Kind.CANCEL:
      return ex.cancel();
    case Kind.BODY:
      return ex.received(f.data);
    case Kind.END:
      return ex.bodyEnded(f.trailer);
    default:
      return ex.bodyAborted(f.reason);
  }
}

function expire(ex) {
  ex.worker.within(ex, expired);
}

function expired(ex) {
  ex.expired();
}

function abandon(ex, err) {
  ex.abandon(err);
}

function drained(ex) {
  ex.drained();
}

// closeFinished follows 'finish' with 'close', as Node's server does; a
// body the handler did not read is dropped.
function closeFinished(ex) {
  const req = ex.req;
  ex.quiet = true;
  if (!req.readableEnded && !req.destroyed) {
    if (req.complete && !req._consuming) req._dump();
    else if (!req.complete) req.destroy();
  }
  ex.closeResponse();
}

function describe(err) {
  return err instanceof Error ? err.message : String(err);
}

function flushTick(ex) {
  ex.scheduled = false;
  if (ex.size > 0 || !ex.headSent) ex.flush(false);
}

module.exports = { Slot, Exchange, kExchange };
