'use strict';
// An Express 5 app runs unchanged under the sdk (fixtures/express-app.js).

const test = require('node:test');
const assert = require('node:assert/strict');
const { startWorker } = require('./harness');

let w;
test.before(async () => {
  w = await startWorker('fixtures/express-app.js');
});
test.after(() => w.stop());

const json = (r) => JSON.parse(r.body.toString());
const post = (uri, body, header = {}) => ({
  method: 'POST', uri, body: Buffer.from(body),
  header: { 'Content-Type': ['application/json'], 'Content-Length': [String(Buffer.byteLength(body))], ...header },
});

test('routes, parameters and JSON', async () => {
  const s = w.slots[0];
  const r = await s.exchange({ uri: '/items/1' });
  assert.equal(r.status, 200);
  assert.deepEqual(r.header['Content-Type'], ['application/json; charset=utf-8']);
  assert.ok(r.header.Etag, 'Express computes an ETag');
  assert.deepEqual(json(r), { id: '1', name: 'one' });
  assert.equal((await s.exchange({ uri: '/items/9' })).status, 404);
  const c = await s.exchange(post('/items', '{"name":"two"}'));
  assert.equal(c.status, 201);
  assert.deepEqual(c.header.Location, ['/items/2']);
  assert.deepEqual(json(c), { id: '2', name: 'two' });
  assert.equal((await s.exchange(post('/items', '{"nope":1}'))).status, 400);
  assert.deepEqual(json(await s.exchange(post('/items', '{bad'))), { error: 'bad json' });
});

// streamedPost sends a JSON body of n characters in body frames.
function streamedPost(s, n) {
  const body = Buffer.from(JSON.stringify({ name: 'x'.repeat(n) }));
  const id = s.request({ method: 'POST', uri: '/items', body: body.subarray(0, 65536), eof: false, contentLength: body.length,
    header: { 'Content-Type': ['application/json'], 'Content-Length': [String(body.length)] } });
  for (let off = 65536; off < body.length; off += 65536) s.body(id, body.subarray(off, off + 65536));
  s.end(id);
  return s.response(id);
}

test('a JSON body streamed in body frames', async () => {
  const r = await streamedPost(w.slots[0], 90000);
  assert.equal(r.status, 201);
  assert.equal(json(r).name.length, 90000);
  // Over body-parser's limit: it reads the rest, then Express answers 413.
  const big = await streamedPost(w.slots[0], 500000);
  assert.equal(big.status, 413);
  assert.deepEqual(json(big), { error: 'request entity too large' });
});

test('request properties Express derives from the connection and headers', async () => {
  const r = await w.slots[0].exchange({ uri: '/whoami?a=1&b=2', remoteAddr: '127.0.0.1:5555', header: { 'X-Forwarded-For': ['203.0.113.9'], 'X-Forwarded-Proto': ['https'] } });
  assert.deepEqual(json(r), { ip: '203.0.113.9', hostname: 'example.test', protocol: 'https', query: { a: '1', b: '2' }, xhr: false, fresh: false });
  assert.deepEqual(r.header['Set-Cookie'], ['seen=yes; Path=/; HttpOnly']);
});

test('redirects, static files, sendFile and HEAD', async () => {
  const s = w.slots[0];
  const red = await s.exchange({ uri: '/old' });
  assert.equal(red.status, 301);
  assert.deepEqual(red.header.Location, ['/items/1']);
  for (const uri of ['/static/style.css', '/file']) {
    const r = await s.exchange({ uri });
    assert.equal(r.status, 200, uri);
    assert.equal(r.body.toString(), 'body { color: teal }\n', uri);
    assert.deepEqual(r.header['Content-Type'], ['text/css; charset=utf-8'], uri);
  }
  const h = await s.exchange({ method: 'HEAD', uri: '/items/1' });
  assert.equal(h.status, 200);
  assert.equal(h.body.length, 0);
  assert.deepEqual(h.header['Content-Length'], ['23']);
  // A conditional request answered 304 by Express's freshness check.
  const etag = (await s.exchange({ uri: '/items/1' })).header.Etag[0];
  assert.equal((await s.exchange({ uri: '/items/1', header: { 'If-None-Match': [etag] } })).status, 304);
});

test('errors go to Express\'s error handler; the default one answers 404', async () => {
  const s = w.slots[0];
  assert.deepEqual(json(await s.exchange({ uri: '/boom' })), { error: 'express boom' });
  const a = await s.exchange({ uri: '/async-boom' });
  assert.equal(a.status, 500);
  assert.deepEqual(json(a), { error: 'async express boom' });
  const nf = await s.exchange({ uri: '/nowhere' });
  assert.equal(nf.status, 404);
  assert.match(nf.body.toString(), /Cannot GET \/nowhere/);
});
