'use strict';
// The handler every server of the bench runs: GET / answers "hello world\n";
// POST / echoes its body.

module.exports = function handler(req, res) {
  if (req.method === 'POST') {
    res.setHeader('Content-Type', 'application/octet-stream');
    req.pipe(res);
    return;
  }
  res.setHeader('Content-Type', 'text/plain');
  res.end('hello world\n');
};
