'use strict';
// One request of fork.js: answers as handler.js does (hello, or the body
// echoed), from the request the master sent.

// The master may be gone (its client left): nothing to do then.
process.on('error', () => {});
process.once('message', (m) => {
  const reply = m.method === 'POST'
    ? { status: 200, headers: { 'content-type': 'application/octet-stream' }, body: m.body }
    : { status: 200, headers: { 'content-type': 'text/plain' }, body: Buffer.from('hello world\n').toString('base64') };
  process.send(reply);
});
