'use strict';
// Structured log lines on standard error, in the format the dispatcher
// re-levels (ipc/PROTOCOL.md 2.4): one JSON object per line with
// "@level", "@message", "@timestamp", and "request_id" to tie the line to
// its request in the dispatcher's log.

const LEVELS = ['debug', 'info', 'warn', 'error'];

// Logger writes lines with fixed fields (a request ID) and a line's own.
class Logger {
  constructor(fields) {
    this.fields = fields;
  }

  // with returns a logger that adds fields to every line.
  with(fields) {
    return new Logger({ ...this.fields, ...fields });
  }
}

for (const level of LEVELS) {
  Logger.prototype[level] = function log(message, fields) {
    write(level, message, this.fields, fields);
  };
}

function write(level, message, base, fields) {
  const line = { '@level': level, '@message': String(message), '@timestamp': timestamp() };
  if (base) Object.assign(line, base);
  if (fields) {
    for (const [k, v] of Object.entries(fields)) {
      line[k] = v instanceof Error ? v.stack || String(v) : v;
    }
  }
  let text;
  try {
    text = JSON.stringify(line);
  } catch (err) {
    text = JSON.stringify({ '@level': level, '@message': String(message), '@timestamp': line['@timestamp'], log_error: String(err) });
  }
  // Writes to a pipe are synchronous on Linux: the line is out before
  // anything that follows, an exit included.
  process.stderr.write(text + '\n');
}

// timestamp is RFC 3339 with microseconds, as the Go sdk writes it.
function timestamp() {
  return new Date().toISOString().replace('Z', '000Z');
}

const root = new Logger(null);

module.exports = { Logger, root };
