'use strict';
// The sdk against a stand-in dispatcher (harness.js): what a handler sees
// and what goes on the wire.

const test = require('node:test');
const assert = require('node:assert/strict');
const { startWorker, Kind } = require('./harness');

const HANDLERS = 'fixtures/handlers.js';

async function withWorker(opts, fn) {
  const w = await startWorker(HANDLERS, opts);
  try {
    await fn(w);
  } finally {
    await w.stop();
  }
}

test('a request as http.createServer gives it', () => withWorker({}, async (w) => {
  const s = w.slots[0];
  const r = await s.exchange({
    uri: '/info?q=1',
    header: { Accept: ['text/plain', 'application/json'], Cookie: ['a=1', 'b=2'], 'User-Agent': ['ua'] },
    remoteAddr: '[2001:db8::1]:4321',
    requestId: 'rid-7',
    timeoutMs: 30000,
  });
  assert.equal(r.status, 200);
  assert.deepEqual(r.header['Content-Type'], ['application/json']);
  const info = JSON.parse(r.body);
  assert.equal(info.method, 'GET');
  assert.equal(info.url, '/info?q=1');
  assert.equal(info.httpVersion, '1.1');
  // Lower-case names, Node's joining rules, Host from the frame, the
  // request ID as a header.
  assert.equal(info.headers.host, 'example.test');
  assert.equal(info.headers.accept, 'text/plain, application/json');
  assert.equal(info.headers.cookie, 'a=1; b=2');
  assert.equal(info.headers['x-request-id'], 'rid-7');
  assert.deepEqual(info.rawHeaders.slice(0, 2), ['Host', 'example.test']);
  assert.equal(info.remoteAddress, '2001:db8::1');
  assert.equal(info.remotePort, 4321);
  assert.equal(info.remoteFamily, 'IPv6');
  assert.equal(info.connection, true);
  assert.equal(info.requestId, 'rid-7');
  assert.equal(info.requestIdRes, 'rid-7');
  assert.ok(info.incoming && info.serverResponse);
  // The deadline counts from the start of the request.
  assert.ok(info.deadline - info.now > 25000 && info.deadline - info.now <= 30000, `deadline in ${info.deadline - info.now} ms`);
  // Elements of a later protocol version are ignored.
  const again = await s.exchange({ uri: '/info', timeoutMs: 0, extra: [1.5, { future: [null] }, 'x'] });
  assert.equal(JSON.parse(again.body).deadline, null);
}));

test('response headers, status and trailers', () => withWorker({}, async (w) => {
  const r = await w.slots[0].exchange({ uri: '/headers' });
  assert.equal(r.status, 201);
  assert.deepEqual(r.header['X-Multi'], ['a', 'b']);
  assert.deepEqual(r.header['Set-Cookie'], ['a=1', 'b=2']);
  assert.deepEqual(r.header['X-Given'], ['given']);
  assert.deepEqual(r.header['X-Had'], ['a,b']);
  assert.equal(r.header['X-Gone'], undefined);
  assert.equal(r.body.toString(), 'headersSent=true threw=true');
  // One frame: head, body and end together. As in Node, the length is
  // set only for a body given whole to end() before any head.
  assert.equal(r.frames.length, 1);
  assert.equal(r.header['Content-Length'], undefined);

  const nc = await w.slots[0].exchange({ uri: '/no-content' });
  assert.equal(nc.status, 204);
  assert.equal(nc.body.length, 0);
}));

test('a streamed body both ways, with flow control and trailers', () => withWorker({}, async (w) => {
  const s = w.slots[0];
  const size = 3 << 20;
  const body = Buffer.alloc(size);
  for (let i = 0; i < size; i++) body[i] = (i * 7) % 256;
  const id = s.request({ method: 'POST', uri: '/echo', eof: false, body: body.subarray(0, 65536), contentLength: size });
  // The acknowledgement first (head-ack, with the wide window's grant).
  const ack = await s.next();
  assert.deepEqual([ack.kind, ack.id, ack.n], [Kind.WINDOW, id, (1 << 20) - (256 << 10)]);
  let sent = 65536;
  let credit = 1 << 20;
  const r = { body: [], trailer: null };
  // Send within the credit; read what comes back.
  const frames = [];
  while (sent < size) {
    while (sent < size && sent + 65536 <= credit) {
      s.body(id, body.subarray(sent, sent + 65536));
      sent += 65536;
    }
    if (sent === size) break;
    const f = await s.next();
    frames.push(f);
    if (f.kind === Kind.WINDOW) credit += f.n;
  }
  s.end(id, { 'X-Sum': ['42'] });
  for (;;) {
    const f = await s.next();
    frames.push(f);
    if (f.kind === Kind.END) break;
  }
  for (const f of frames) {
    if (f.kind === Kind.RESPONSE || f.kind === Kind.BODY) r.body.push(f.kind === Kind.RESPONSE ? f.body : f.data);
    if (f.kind === Kind.END) r.trailer = f.trailer;
    if (f.kind === Kind.BODY) assert.ok(f.data.length <= 256 << 10, `chunk of ${f.data.length}`);
  }
  assert.ok(Buffer.concat(r.body).equals(body), 'echoed body differs');
  assert.deepEqual(r.trailer, { 'X-Length': [String(size)], 'X-Sum': ['42'] });
  const head = frames.find((f) => f.kind === Kind.RESPONSE);
  assert.equal(head.eof, false);
  assert.ok(head.body.length <= 65536);
}));

test('a slow reader acknowledges only what it read', () => withWorker({}, async (w) => {
  const s = w.slots[0];
  const id = s.request({ method: 'POST', uri: '/read-later', eof: false, body: Buffer.alloc(65536), contentLength: -1 });
  const ack = await s.next();
  assert.equal(ack.kind, Kind.WINDOW);
  for (let i = 0; i < 14; i++) s.body(id, Buffer.alloc(65536)); // 960 KiB: within the 1 MiB window
  s.end(id);
  const r = await s.response(id);
  assert.equal(r.body.toString(), `read ${15 * 65536}\n`);
  // Credit came in quarters of the window, and never beyond what was read.
  const credit = r.frames.filter((f) => f.kind === Kind.WINDOW).reduce((n, f) => n + f.n, 0);
  assert.ok(credit <= 15 * 65536, `credit ${credit}`);
}));

test('a request marked continue gets its window when the handler reads', () => withWorker({}, async (w) => {
  const s = w.slots[0];
  const id = s.request({ method: 'POST', uri: '/echo', eof: false, cont: true, contentLength: 5 });
  const ack = await s.next();
  assert.deepEqual([ack.kind, ack.n], [Kind.WINDOW, 0]); // no credit with continue
  const grant = await s.next();
  assert.deepEqual([grant.kind, grant.id, grant.n], [Kind.WINDOW, id, 1 << 20]);
  s.body(id, Buffer.from('hello'));
  s.end(id);
  const r = await s.response(id);
  assert.equal(r.body.toString(), 'hello');

  // A handler that does not read grants nothing.
  const id2 = s.request({ method: 'POST', uri: '/ignore-body', eof: false, cont: true, contentLength: 5 });
  const r2 = await s.response(id2);
  assert.deepEqual(r2.frames.filter((f) => f.kind === Kind.WINDOW).map((f) => f.n), [0]);
  assert.equal(r2.body.toString(), 'not read\n');
}));

test('each write in its own tick is a frame; large bodies go in chunks', () => withWorker({}, async (w) => {
  const s = w.slots[0];
  const r = await s.exchange({ uri: '/stream?n=3' });
  assert.equal(r.body.toString(), 'chunk 0\nchunk 1\nchunk 2\n');
  assert.deepEqual(r.frames.map((f) => f.kind), [Kind.RESPONSE, Kind.BODY, Kind.BODY, Kind.END]);

  const big = await s.exchange({ uri: '/big?size=1000000' });
  assert.equal(big.body.length, 1000000);
  assert.ok(big.body.every((b, i) => b === i % 251));
  assert.equal(big.frames[0].body.length, 65536);
  assert.ok(big.frames.slice(1, -1).every((f) => f.kind === Kind.BODY && f.data.length <= 262144));
  assert.deepEqual(big.header['Content-Length'], ['1000000']);
}));

test('without wide-chunk, body frames stay within 64 KiB', () => withWorker({ features: 'head-ack', maxFrame: 131072 }, async (w) => {
  assert.deepEqual(w.features, ['head-ack']);
  const big = await w.slots[0].exchange({ uri: '/big?size=300000' });
  assert.equal(big.body.length, 300000);
  assert.ok(big.frames.every((f) => (f.kind === Kind.BODY ? f.data.length : 0) <= 65536));
}));

test('write() asks to wait and \'drain\' comes', () => withWorker({}, async (w) => {
  const r = await w.slots[0].exchange({ uri: '/backpressure' });
  assert.match(r.body.toString(), /writes before drain: 2, needDrain after: false/);
}));

test('informational responses and flushHeaders', () => withWorker({}, async (w) => {
  const s = w.slots[0];
  const r = await s.exchange({ uri: '/early-hints' });
  assert.deepEqual(r.informational.map((f) => f.status), [103, 102]);
  assert.deepEqual(r.informational[0].header, { Link: ['</style.css>; rel=preload; as=style'] });
  assert.equal(r.body.toString(), 'hinted\n');

  const id = s.request({ uri: '/flush-headers' });
  const head = await s.next();
  assert.deepEqual([head.kind, head.status, head.eof, head.body.length], [Kind.RESPONSE, 202, false, 0]);
  const rest = await s.response(id);
  assert.equal(rest.body.toString(), 'later\n');
}));

test('no informational frame unless announced', () => withWorker({ features: '' }, async (w) => {
  assert.deepEqual(w.features, []);
  const r = await w.slots[0].exchange({ uri: '/early-hints' });
  assert.equal(r.informational.length, 0);
  assert.equal(r.body.toString(), 'hinted\n');
}));

test('a handler\'s exception answers 500 (or cuts) and the worker serves on', () => withWorker({}, async (w) => {
  const s = w.slots[0];
  for (const uri of ['/throw', '/throw-async', '/reject']) {
    const r = await s.exchange({ uri, requestId: `id${uri}` });
    assert.equal(r.status, 500, uri);
    assert.equal(r.body.toString(), 'Internal Server Error\n');
  }
  const cut = await s.exchange({ uri: '/throw-after-head' });
  assert.equal(cut.aborted, true);
  assert.match(cut.reason, /late boom/);
  const ok = await s.exchange({ uri: '/info' });
  assert.equal(ok.status, 200);
  const errors = w.logs().filter((l) => l['@level'] === 'error').map((l) => [l.request_id, l['@message']]);
  assert.deepEqual(errors.slice(0, 3), [
    ['id/throw', 'handler error: sync boom'],
    ['id/throw-async', 'handler error: async boom'],
    ['id/reject', 'handler error: rejected boom'],
  ]);
  assert.ok(w.logs().some((l) => /late boom/.test(l.stack)));
}));

test('an exception from a listener the sdk calls is the exchange\'s', () => withWorker({}, async (w) => {
  const s = w.slots[0];
  const id = s.request({ method: 'POST', uri: '/throw-on-data', eof: false, body: Buffer.alloc(10), contentLength: -1, requestId: 'data' });
  const r = await s.response(id);
  assert.equal(r.status, 500);
  const id2 = s.request({ uri: '/throw-on-close', requestId: 'close' });
  await new Promise((res) => setTimeout(res, 50));
  s.cancel(id2);
  assert.equal((await s.response(id2)).aborted, true);
  assert.equal((await s.exchange({ uri: '/info' })).status, 200);
  await waitFor(() => w.logs().some((l) => l.request_id === 'close' && /close boom/.test(l['@message'])));
  assert.ok(w.logs().some((l) => l.request_id === 'data' && /data boom/.test(l['@message'])));
}));

test('a cancel closes the request and the response, and ends the exchange', () => withWorker({}, async (w) => {
  const s = w.slots[0];
  const id = s.request({ uri: '/wait', requestId: 'gone' });
  await new Promise((r) => setTimeout(r, 50));
  s.cancel(id);
  const r = await s.response(id);
  assert.equal(r.aborted, true);
  assert.equal(r.reason, 'cancelled by the dispatcher');
  await waitFor(() => w.logs().filter((l) => l.request_id === 'gone').length >= 5);
  const said = w.logs().filter((l) => l.request_id === 'gone').map((l) => l['@message']);
  assert.deepEqual(said, ['waiting', 'signal aborted: cancelled by the dispatcher', 'req aborted', 'res close, writableEnded=false', 'req close']);
  assert.equal((await s.exchange({ uri: '/info' })).status, 200);
}));

test('the signal aborts at the deadline', () => withWorker({}, async (w) => {
  const t0 = Date.now();
  const r = await w.slots[0].exchange({ uri: '/deadline', timeoutMs: 100 });
  assert.equal(r.status, 503);
  assert.equal(r.body.toString(), 'TimeoutError\n');
  assert.ok(Date.now() - t0 >= 100);
}));

test('at the deadline, a handler without an answer gets 504 and is torn down; the worker serves on', () => withWorker({}, async (w) => {
  const s = w.slots[0];
  const t0 = Date.now();
  const r = await s.exchange({ uri: '/wait', requestId: 'late', timeoutMs: 100 });
  assert.ok(Date.now() - t0 >= 100);
  assert.equal(r.status, 504);
  assert.equal(r.body.toString(), 'Gateway Timeout\n');
  await waitFor(() => w.logs().filter((l) => l.request_id === 'late').length >= 6);
  const said = w.logs().filter((l) => l.request_id === 'late').map((l) => l['@message']);
  assert.deepEqual(said, ['waiting', 'signal aborted: the request\'s deadline passed',
    'the request\'s deadline passed before its response started: answered 504', 'req aborted', 'res close, writableEnded=false', 'req close']);
  assert.equal((await s.exchange({ uri: '/info' })).status, 200);
}));

test('at the deadline, \'timeout\' is emitted and its listener answers', () => withWorker({}, async (w) => {
  const r = await w.slots[0].exchange({ uri: '/on-timeout', timeoutMs: 50 });
  assert.equal(r.status, 503);
  assert.equal(r.body.toString(), 'timeout event, signal aborted: true\n');
  // Without a timeout, no 'timeout': the handler answers later.
  const id = w.slots[0].request({ uri: '/on-timeout', timeoutMs: 0 });
  await new Promise((res) => setTimeout(res, 100));
  w.slots[0].cancel(id);
  assert.equal((await w.slots[0].response(id)).aborted, true);
}));

test('a response whose head was sent streams past the deadline', () => withWorker({}, async (w) => {
  const r = await w.slots[0].exchange({ uri: '/slow-stream?n=3&ms=40', timeoutMs: 50 });
  assert.equal(r.status, 200);
  assert.equal(r.body.toString(), 'tick 0\ntick 1\ntick 2\naborted=false\n');
}));

test('a timeout_ms of the wrong type, or too large, is a protocol violation', () => withWorker({ slots: 2 }, async (w) => {
  w.slots[0].request({ uri: '/info', timeoutMs: 'soon' });
  assert.equal(await w.slots[0].next(), null);
  w.slots[1].request({ uri: '/info', timeoutMs: 9223372036855 });
  assert.equal(await w.slots[1].next(), null);
  assert.ok(w.logs().some((l) => /timeout_ms: want an unsigned integer/.test(l['@message'])));
  assert.ok(w.logs().some((l) => /timeout_ms: 9223372036855 is over 9223372036854/.test(l['@message'])));
}));

test('pipelined requests run in order; a cancelled queued one is answered in its turn', () => withWorker({ depth: 4 }, async (w) => {
  const s = w.slots[0];
  const a = s.request({ uri: '/stream?n=2' });
  const b = s.request({ uri: '/info' });
  const c = s.request({ uri: '/info' });
  s.cancel(c);
  assert.equal((await s.response(a)).body.toString(), 'chunk 0\nchunk 1\n');
  assert.equal((await s.response(b)).status, 200);
  const rc = await s.response(c);
  assert.deepEqual([rc.aborted, rc.reason], [true, 'cancelled before it started']);
}));

test('a withdrawn queued request is given back at once, never run; the next runs in its turn', () => withWorker({ depth: 4 }, async (w) => {
  assert.ok(w.features.includes('withdraw'), `features ${w.features}`);
  const s = w.slots[0];
  const a = s.request({ uri: '/wait', requestId: 'running' });
  const b = s.request({ uri: '/info', requestId: 'withdrawn' });
  const c = s.request({ uri: '/info' });
  // The running request, and an unknown one, are not withdrawn.
  s.withdraw(a);
  s.withdraw(99);
  s.withdraw(b);
  const f = await s.next();
  assert.deepEqual([f.kind, f.id], [Kind.WITHDRAWN, b]);
  s.withdraw(b); // a second time: already gone
  s.cancel(a);
  assert.equal((await s.response(a)).aborted, true);
  const rc = await s.response(c);
  assert.equal(rc.status, 200);
  assert.equal(JSON.parse(rc.body).requestId, `req-${c}`);
  assert.equal((await s.ping()).kind, Kind.PONG);
  assert.ok(!w.logs().some((l) => l.request_id === 'withdrawn'));
}));

test('without the feature, no withdraw is offered', () => withWorker({ features: 'head-ack' }, async (w) => {
  assert.deepEqual(w.features, ['head-ack']);
}));

test('a protocol violation closes the slot, and the worker exits with its last slot', () => withWorker({ slots: 2 }, async (w) => {
  w.slots[0].send(99, [1]);
  assert.equal(await w.slots[0].next(), null);
  assert.equal((await w.slots[1].exchange({ uri: '/info' })).status, 200);
  assert.ok(w.logs().some((l) => /protocol violation: unknown frame kind 99/.test(l['@message'])));
  w.slots[1].socket.end();
  assert.deepEqual(await w.exited, { code: 0, signal: null });
}));

test('process.exit in a handler ends the worker', () => withWorker({}, async (w) => {
  w.slots[0].request({ uri: '/exit' });
  assert.equal(await w.slots[0].next(), null);
  assert.deepEqual(await w.exited, { code: 3, signal: null });
}));

test('VERSION names the sdk and its version', () => {
  assert.equal(require('..').VERSION, `node-sdk/${require('../package.json').version}`);
});

test('started by hand, a worker explains itself and exits 1', async () => {
  const { spawnSync } = require('child_process');
  const r = spawnSync(process.execPath, [require.resolve('./fixtures/handlers.js')], { env: { PATH: process.env.PATH }, encoding: 'utf8' });
  assert.equal(r.status, 1);
  assert.equal(r.stdout, '');
  assert.match(r.stderr, /This program is a dispatcher worker: run it with `dispatcher --workers .*handlers\.js`/);
});

test('a bad environment is refused before the handshake', async () => {
  const { spawnSync } = require('child_process');
  const { COOKIE } = require('./harness');
  for (const [k, v] of [['DISPATCHER_IPC_FDS', '2'], ['DISPATCHER_IPC_MAX_FRAME', '1000'], ['DISPATCHER_IPC_DEPTH', '65']]) {
    const env = { PATH: process.env.PATH, DISPATCHER_WORKER_COOKIE: COOKIE, DISPATCHER_IPC_FDS: '3', [k]: v };
    const r = spawnSync(process.execPath, [require.resolve('./fixtures/handlers.js')], { env, encoding: 'utf8' });
    assert.equal(r.status, 1, k);
    assert.equal(r.stdout, '', k);
    assert.match(r.stderr, new RegExp(`bad ${k}`));
  }
});

async function waitFor(cond) {
  const end = Date.now() + 5000;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met within 5 s');
    await new Promise((r) => setTimeout(r, 10));
  }
}
