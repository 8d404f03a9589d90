'use strict';
// What the dispatcher tells a worker in its environment (ipc/PROTOCOL.md
// 2.1): the slots it inherited, the frame limit, the pipelining depth and
// the optional features it understands.

const { DEFAULT_MAX_FRAME, MIN_MAX_FRAME, MAX_DEPTH } = require('./wire');

const COOKIE_KEY = 'DISPATCHER_WORKER_COOKIE';
const COOKIE_VALUE = 'b6f3f1c4e0a94f3c9d3c2a7e5b1d8f60';

// NotWorkerError: the process was not started by a dispatcher, or with an
// environment it cannot serve.
class NotWorkerError extends Error {
  constructor(message) {
    super(message);
    this.name = 'NotWorkerError';
  }
}

// readEnv returns the worker's settings from env, or throws a
// NotWorkerError naming what is missing or wrong.
function readEnv(env) {
  const list = env.DISPATCHER_IPC_FDS;
  if (env[COOKIE_KEY] !== COOKIE_VALUE || !list) {
    throw new NotWorkerError(`not started by a dispatcher (no ${COOKIE_KEY} and DISPATCHER_IPC_FDS in the environment)`);
  }
  const fds = list.split(',').map((f) => (/^[0-9]+$/.test(f) ? Number(f) : NaN));
  if (fds.some((fd) => !(fd >= 3))) throw new NotWorkerError(`bad DISPATCHER_IPC_FDS=${JSON.stringify(list)}`);
  let maxFrame = DEFAULT_MAX_FRAME;
  if (env.DISPATCHER_IPC_MAX_FRAME !== undefined) {
    maxFrame = decimal(env.DISPATCHER_IPC_MAX_FRAME);
    if (!(maxFrame >= MIN_MAX_FRAME)) throw new NotWorkerError(`bad DISPATCHER_IPC_MAX_FRAME=${JSON.stringify(env.DISPATCHER_IPC_MAX_FRAME)}`);
  }
  let depth = 1;
  if (env.DISPATCHER_IPC_DEPTH !== undefined) {
    depth = decimal(env.DISPATCHER_IPC_DEPTH);
    if (!(depth >= 1 && depth <= MAX_DEPTH)) throw new NotWorkerError(`bad DISPATCHER_IPC_DEPTH=${JSON.stringify(env.DISPATCHER_IPC_DEPTH)}`);
  }
  const features = new Set((env.DISPATCHER_IPC_FEATURES || '').split(',').map((f) => f.trim()).filter(Boolean));
  return {
    fds,
    maxFrame,
    depth,
    features,
    control: env.DISPATCHER_CONTROL !== 'none',
    socketDir: env.PLUGIN_UNIX_SOCKET_DIR || '',
    tmpDir: env.TMPDIR || '/tmp',
  };
}

function decimal(s) {
  return /^[0-9]{1,15}$/.test(s) ? Number(s) : NaN;
}

module.exports = { readEnv, NotWorkerError };
