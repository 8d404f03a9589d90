// A small JSON API on Express 5, written as for app.listen(): nothing in it
// knows about the dispatcher (server.js serves it).
//
//   GET  /products       the catalog
//   GET  /products/:id   one product, or a JSON 404
//   POST /quotes         {"items":[{"id":"p1","qty":2}]} -> the priced lines and total
//
// Errors are JSON too: {"error":"..."} with 400, 404, 413, 415 or 422.
//
// The catalog is read-only. Each worker is its own process, so anything
// one worker keeps in memory is invisible to the others and lost when it
// is replaced: keep shared state in a database or on disk.
'use strict';

const express = require('express');
const { logger } = require('@childproc/dispatcher-sdk');

const catalog = [
  { id: 'p1', name: 'notebook', price_cents: 450 },
  { id: 'p2', name: 'pencil', price_cents: 120 },
  { id: 'p3', name: 'eraser', price_cents: 80 },
];

const find = (id) => catalog.find((p) => p.id === id);

class HTTPError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

const app = express();
app.disable('x-powered-by');

app.get('/products', (req, res) => res.json(catalog));

app.get('/products/:id', (req, res) => {
  const p = find(req.params.id);
  if (!p) throw new HTTPError(404, `no product "${req.params.id}"`);
  res.json(p);
});

app.post('/quotes', express.json({ limit: '64kb', type: () => true }), (req, res) => {
  if (!req.is('application/json')) throw new HTTPError(415, 'want Content-Type application/json');
  const items = req.body?.items;
  if (!Array.isArray(items) || items.length === 0) throw new HTTPError(422, 'no items');
  const lines = items.map(({ id, qty }) => {
    const p = find(id);
    if (!p) throw new HTTPError(422, `no product "${id}"`);
    if (!Number.isInteger(qty) || qty < 1 || qty > 1000) throw new HTTPError(422, `qty ${qty} of "${id}" outside 1-1000`);
    return { ...p, qty, subtotal_cents: p.price_cents * qty };
  });
  const total = lines.reduce((n, l) => n + l.subtotal_cents, 0);
  // A line in the dispatcher's log, at its level, with the request ID.
  logger(req).info('quote', { lines: lines.length, total_cents: total });
  res.json({ lines, total_cents: total });
});

app.use((req, res) => {
  res.status(404).json({ error: 'no such route' });
});

// Express's body parser reports bad JSON (400) and bodies over its limit
// (413) as errors with a status.
app.use((err, req, res, next) => {
  const status = err.status || err.statusCode || 500;
  if (status >= 500) logger(req).error('request failed', { error: err });
  res.status(status).json({ error: status >= 500 ? 'internal error' : err.message });
});

module.exports = app;
