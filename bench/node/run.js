#!/usr/bin/env node
// bench/node/run.js: the Node.js sdk under the dispatcher against Node's own
// ways of serving, on loopback, in one run, and the ratios.
//
//   pool     dispatcher --pool-size <CPUs>, workers running handler.js (worker.js)
//   cluster  Node's cluster pattern: a primary forking one worker per CPU,
//            sharing the port (cluster.js)
//   plain    one Node.js http process (plain.js): the CPU per request the
//            sdk's worker is compared with
//   pool-go  the same dispatcher with the Go hello worker (examples/hello):
//            what the Node.js worker adds
//   oneshot  dispatcher --mode oneshot: a fresh Node.js worker per request
//   fork     a fresh Node.js process per request, forked by a Node.js master
//            (fork.js), the way to isolate requests without the dispatcher
//   pool-alt, oneshot-alt  pool and oneshot with --alt-worker FILE instead
//            of worker.js: another build of the sdk (a checkout of the
//            commit before a change), for before and after in one run
//
// Workloads: hello (GET /, "hello world\n") and echo (POST / with 4 KiB
// echoed), with wrk at --conns connections (--oneshot-conns for oneshot
// and fork). Runs are interleaved in rounds, in reverse order every other
// round; each server starts fresh, in a session of its own, with a minimal
// environment (PATH only: every server's Node.js starts as the dispatcher's
// workers do). The report gives medians, the ratios of each round and the
// CPU per request of each process kind; --profile adds a CPU profile of the
// sdk's worker and of the plain server, by category.
//
//   node bench/node/run.js [--rounds 3] [--duration 8] [--warmup 1] [--conns 32]
//        [--oneshot-conns 8] [--runs pool:hello,cluster:hello,...] [--profile]
//        [--profile-dir DIR (keeps the .cpuprofile files)] [--out FILE]
//        [--alt-worker FILE]
//
// Needs Go, Node.js and wrk (installed with apt-get when missing and run as
// root). Everything is bounded and targets 127.0.0.1 only.
'use strict';

const { spawn, spawnSync, execFileSync } = require('child_process');
const fs = require('fs');
const http = require('http');
const net = require('net');
const os = require('os');
const path = require('path');

const HERE = __dirname;
const REPO = path.resolve(HERE, '..', '..');
const CPUS = os.availableParallelism();
const TICK_US = 1e6 / 100; // USER_HZ
const READY_MS = 30000;
const STOP_MS = 15000;

const ALL_RUNS = ['cluster:hello', 'pool:hello', 'plain:hello', 'pool-go:hello', 'cluster:echo', 'pool:echo', 'plain:echo', 'fork:hello', 'oneshot:hello'];

function parseArgs(argv) {
  const o = { rounds: 3, duration: 8, warmup: 1, conns: 32, oneshotConns: 8, runs: ALL_RUNS, profile: false, profileDir: '', out: '', altWorker: '' };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    const int = () => {
      const v = Number(val());
      if (!Number.isInteger(v) || v < 1) usage(`${a}: want a positive integer`);
      return v;
    };
    switch (a) {
      case '--rounds': o.rounds = int(); break;
      case '--duration': o.duration = int(); break;
      case '--warmup': o.warmup = int(); break;
      case '--conns': o.conns = int(); break;
      case '--oneshot-conns': o.oneshotConns = int(); break;
      case '--runs': o.runs = val().split(','); break;
      case '--profile': o.profile = true; break;
      case '--profile-dir': o.profile = true; o.profileDir = path.resolve(val()); break;
      case '--out': o.out = val(); break;
      case '--alt-worker': o.altWorker = path.resolve(val()); break;
      case '-h': case '--help': usage(); break;
      default: usage(`unknown argument ${a}`);
    }
  }
  for (const r of o.runs) {
    const [s, w] = r.split(':');
    if (!SERVERS[s] || !WORKLOADS[w]) usage(`--runs: unknown run ${r}`);
    if (s.endsWith('-alt') && !o.altWorker) usage(`--runs: ${r} needs --alt-worker`);
  }
  return o;
}

function usage(msg) {
  const text = fs.readFileSync(__filename, 'utf8').split('\n').slice(1, 40).filter((l) => l.startsWith('//')).map((l) => l.replace(/^\/\/ ?/, '')).join('\n');
  if (msg) {
    process.stderr.write(`run.js: ${msg}\n`);
    process.exit(2);
  }
  process.stdout.write(text + '\n');
  process.exit(0);
}

const log = (msg) => process.stderr.write(`[bench/node ${new Date().toTimeString().slice(0, 8)}] ${msg}\n`);

// --- servers ----------------------------------------------------------------

let BIN = ''; // temp dir of the Go binaries
let ALT = ''; // --alt-worker

const dispatcher = (worker, args, port) => [path.join(BIN, 'dispatcher'), [
  '--workers', worker, '--listen', `127.0.0.1:${port}`, '--admin-listen', '', '--access-log=false', '--log-level', 'warn', ...args,
]];

const SERVERS = {
  cluster: (port) => [process.execPath, [path.join(HERE, 'cluster.js'), port]],
  plain: (port, prof) => [process.execPath, [...prof, path.join(HERE, 'plain.js'), port]],
  pool: (port, prof) => prof.length
    ? dispatcher(process.execPath, ['--pool-size', String(CPUS), '--', ...prof, path.join(HERE, 'worker.js')], port)
    : dispatcher(path.join(HERE, 'worker.js'), ['--pool-size', String(CPUS)], port),
  'pool-go': (port) => dispatcher(path.join(BIN, 'hello'), ['--pool-size', String(CPUS)], port),
  oneshot: (port) => dispatcher(path.join(HERE, 'worker.js'), ['--mode', 'oneshot'], port),
  fork: (port) => [process.execPath, [path.join(HERE, 'fork.js'), port]],
  'pool-alt': (port) => dispatcher(ALT, ['--pool-size', String(CPUS)], port),
  'oneshot-alt': (port) => dispatcher(ALT, ['--mode', 'oneshot'], port),
};

const WORKLOADS = {
  hello: { body: 0 },
  echo: { body: 4096 },
};

const oneshotLike = (server) => server === 'oneshot' || server === 'oneshot-alt' || server === 'fork';

// --- /proc ------------------------------------------------------------------

function procStat(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(') ') + 2).split(' ');
    // fields after "pid (comm) ": 0 state, 3 session, 11 utime, 12 stime,
    // 13 cutime, 14 cstime
    return { pid: Number(pid), state: f[0], session: Number(f[3]), self: Number(f[11]) + Number(f[12]), children: Number(f[13]) + Number(f[14]) };
  } catch {
    return null;
  }
}

// sessionCPU returns the CPU ticks of a server's session: its leader's own,
// those of the children the leader reaped, and each other live process's.
function sessionCPU(sid) {
  const out = { leader: 0, reaped: 0, others: new Map() };
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    const st = procStat(d);
    if (!st || st.session !== sid) continue;
    if (st.pid === Number(sid)) {
      out.leader = st.self;
      out.reaped = st.children;
    } else {
      out.others.set(st.pid, st.self + st.children);
    }
  }
  return out;
}

// cpuDelta is the CPU (µs) of a session between two samples, by kind:
// the leader, its reaped children, the other processes (live workers).
function cpuDelta(a, b) {
  let others = 0;
  for (const [pid, t] of b.others) others += t - (a.others.get(pid) || 0);
  return {
    leader: (b.leader - a.leader) * TICK_US,
    reaped: (b.reaped - a.reaped) * TICK_US,
    others: others * TICK_US,
  };
}

function machineBusy() {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
  return (total - f[3] - f[4]) * TICK_US;
}

// --- running ----------------------------------------------------------------

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

function request(port, body) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: '/', method: body ? 'POST' : 'GET', agent: false, timeout: 5000 }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.end(body);
  });
}

async function startServer(name, prof = []) {
  const port = String(await freePort());
  const [cmd, args] = SERVERS[name](port, prof);
  const child = spawn(cmd, args, {
    cwd: REPO,
    env: { PATH: '/usr/local/bin:/usr/bin:/bin' },
    detached: true,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr = (stderr + d).slice(-4000);
  });
  const exited = new Promise((resolve) => child.on('exit', resolve));
  const s = { name, port, child, exited, stderr: () => stderr };
  const deadline = Date.now() + READY_MS;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${name} exited at start: ${stderr}`);
    try {
      const r = await request(port);
      if (r.status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await stopServer(s);
      throw new Error(`${name} did not answer within ${READY_MS} ms: ${stderr}`);
    }
    await sleep(100);
  }
  return s;
}

async function stopServer(s) {
  try {
    process.kill(-s.child.pid, 'SIGTERM');
  } catch {
    // gone
  }
  await Promise.race([s.exited, sleep(STOP_MS)]);
  // Whatever is left of the session: workers lead process groups of their
  // own within it.
  for (const d of fs.readdirSync('/proc')) {
    const st = /^\d+$/.test(d) && procStat(d);
    if (st && st.session === s.child.pid) {
      try {
        process.kill(st.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  }
  await Promise.race([s.exited, sleep(STOP_MS)]);
}

async function check(s, workload) {
  const body = WORKLOADS[workload].body ? Buffer.alloc(WORKLOADS[workload].body, 'x') : undefined;
  const r = await request(s.port, body);
  const want = body || Buffer.from('hello world\n');
  if (r.status !== 200 || !r.body.equals(want)) throw new Error(`${s.name} ${workload}: answered ${r.status} ${JSON.stringify(r.body.toString().slice(0, 80))}`);
}

// wrk runs wrk under bash, whose `times` reports wrk's CPU.
// A request of a process-per-request server waits for a Node.js start,
// seconds on a loaded machine: wrk's default timeout (2 s) would make the
// clients give up and ask again while the server still works for them.
function wrk(port, conns, seconds, workload, timeout) {
  return new Promise((resolve, reject) => {
    const args = ['-c', 'wrk "$@"; times >&2', 'wrk', '-t1', `-c${conns}`, `-d${seconds}s`, `--timeout=${timeout}s`, '--latency', '-s', path.join(HERE, 'report.lua'), `http://127.0.0.1:${port}/`];
    const p = spawn('bash', args, { env: { ...process.env, BODY_BYTES: String(WORKLOADS[workload].body) }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => {
      out += d;
    });
    p.stderr.on('data', (d) => {
      err += d;
    });
    const timer = setTimeout(() => p.kill('SIGKILL'), (seconds + timeout + 30) * 1000);
    p.on('exit', (code) => {
      clearTimeout(timer);
      const line = out.split('\n').find((l) => l.startsWith('{'));
      const times = err.trim().split('\n').pop().match(/(\d+)m([\d.]+)s (\d+)m([\d.]+)s/);
      if (code !== 0 || !line) return reject(new Error(`wrk failed (${code}): ${out}${err}`));
      const r = JSON.parse(line);
      r.cpu_us = times ? (Number(times[1]) * 60 + Number(times[2]) + Number(times[3]) * 60 + Number(times[4])) * 1e6 : NaN;
      resolve(r);
    });
  });
}

async function measure(o, server, workload, round) {
  const s = await startServer(server);
  try {
    await check(s, workload);
    const conns = oneshotLike(server) ? o.oneshotConns : o.conns;
    const timeout = oneshotLike(server) ? 30 : 2;
    await wrk(s.port, conns, o.warmup, workload, timeout);
    const c0 = sessionCPU(s.child.pid);
    const m0 = machineBusy();
    const w = await wrk(s.port, conns, o.duration, workload, timeout);
    const cpu = cpuDelta(c0, sessionCPU(s.child.pid));
    const busy = machineBusy() - m0;
    if (s.child.exitCode !== null || s.child.signalCode !== null) {
      throw new Error(`${server} ${workload} died during the run (${s.child.exitCode ?? s.child.signalCode}): ${s.stderr()}`);
    }
    const secs = w.duration_us / 1e6;
    const server_us = cpu.leader + cpu.reaped + cpu.others;
    const r = {
      server, workload, round, conns,
      rps: w.requests / secs,
      p50: w.p50_us / 1000,
      p99: w.p99_us / 1000,
      errors: w.non2xx + w.socket_errors,
      requests: w.requests,
      // µs of CPU per request: the whole server, its leader process (the
      // dispatcher, the cluster primary, the fork master), its other
      // processes (live workers) and the ones it reaped (oneshot workers,
      // forked children).
      cpu: server_us / w.requests,
      leader: cpu.leader / w.requests,
      workers: (cpu.others + cpu.reaped) / w.requests,
      // cores used over the run: wrk, the server, the rest of the machine
      cores: { wrk: w.cpu_us / w.duration_us, server: server_us / w.duration_us, rest: Math.max(0, busy - server_us - w.cpu_us) / w.duration_us },
    };
    log(`round ${round} ${server} ${workload}: ${fmt(r.rps)} req/s, p99 ${r.p99.toFixed(2)} ms, ${r.cpu.toFixed(1)} µs CPU/req, rest ${r.cores.rest.toFixed(2)} cores`);
    return r;
  } finally {
    await stopServer(s);
  }
}

// --- profile ----------------------------------------------------------------

// category names what a sampled function's time goes to.
const STARTUP = 'start-up: loading modules (once per process)';

function category(cf) {
  const u = cf.url;
  const f = cf.functionName;
  if (/node:internal\/(modules|bootstrap|process\/pre_execution|main)/.test(u) || f === '' ||
    ['compileForInternalLoader', 'realpathSync', 'readFileUtf8', 'readFileSync', 'internalModuleStat', 'internalModuleReadJSON', 'lstat'].includes(f) ||
    (u === 'node:path' && f === 'resolve')) return STARTUP;
  if (f === '(garbage collector)') return 'garbage collection';
  if (f === '(program)') return 'V8 and libuv, unattributed';
  if (['writeBuffer', 'writev', 'writeUtf8String', 'writeLatin1String', 'writeAsciiString'].includes(f)) return 'socket writes (system calls)';
  if (u.includes('@msgpack')) return 'msgpack encoding and decoding';
  if (u.includes('sdk/node/lib')) return 'sdk: frames, exchange, req/res setup';
  if (/node:_http_|node:internal\/http/.test(u) || ['execute', 'parserOnHeadersComplete', 'parserOnIncoming'].includes(f)) return 'node:http (objects, headers, HTTP parsing)';
  if (u.includes('node:internal/streams') || u === 'node:stream') return 'streams';
  if (u.includes('node:internal/stream_base_commons') || u === 'node:net' || f === 'onStreamRead') return 'socket reads and stream glue';
  if (u.includes('async_hooks')) return 'async_hooks (AsyncLocalStorage)';
  if (u.includes('task_queues') || u.includes('timers') || u.includes('node:events')) return 'ticks, timers, events';
  if (u.includes('bench/node/handler')) return 'the handler';
  if (u.includes('node:buffer') || u.includes('internal/buffer') || /Slice$|Write$/.test(f)) return 'buffers and strings';
  return 'other';
}

function summarizeProfile(file) {
  const p = JSON.parse(fs.readFileSync(file, 'utf8'));
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const cats = new Map();
  let busy = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const n = byId.get(p.samples[i]);
    const dt = p.timeDeltas[i] || 0;
    if (n.callFrame.functionName === '(idle)') continue;
    const c = category(n.callFrame);
    cats.set(c, (cats.get(c) || 0) + dt);
    busy += dt;
  }
  return { busy, cats };
}

async function profile(o) {
  const dir = o.profileDir || fs.mkdtempSync(path.join(os.tmpdir(), 'bench-node-prof-'));
  fs.mkdirSync(dir, { recursive: true });
  const out = {};
  try {
    for (const server of ['pool', 'plain']) {
      const pd = path.join(dir, server);
      fs.mkdirSync(pd, { recursive: true });
      const s = await startServer(server, ['--cpu-prof', `--cpu-prof-dir=${pd}`]);
      let w;
      try {
        await wrk(s.port, o.conns, o.warmup, 'hello', 2);
        w = await wrk(s.port, o.conns, o.duration, 'hello', 2);
      } finally {
        await stopServer(s);
      }
      // Requests served during the whole profile, warm-up included, spread
      // over the workers: the per-request figures divide by them all.
      const files = fs.readdirSync(pd).filter((f) => f.endsWith('.cpuprofile'));
      if (files.length === 0) throw new Error(`${server}: no CPU profile written`);
      const total = { busy: 0, cats: new Map() };
      for (const f of files) {
        const sum = summarizeProfile(path.join(pd, f));
        total.busy += sum.busy;
        for (const [c, t] of sum.cats) total.cats.set(c, (total.cats.get(c) || 0) + t);
      }
      out[server] = { ...total, requests: w.requests * (1 + o.warmup / o.duration), profiles: files.length };
      log(`profile ${server}: ${files.length} profile(s), ${fmt(w.requests / (w.duration_us / 1e6))} req/s`);
    }
  } finally {
    if (!o.profileDir) fs.rmSync(dir, { recursive: true, force: true });
  }
  return out;
}

// --- report -----------------------------------------------------------------

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const fmt = (x) => (x >= 10000 ? `${(x / 1000).toFixed(1)}k` : x >= 100 ? x.toFixed(0) : x.toFixed(x >= 10 ? 1 : 2));
const range = (xs) => `${fmt(Math.min(...xs))}–${fmt(Math.max(...xs))}`;

function report(o, results, prof, env) {
  const lines = [];
  const p = (s = '') => lines.push(s);
  p('# bench/node: the Node.js sdk under the dispatcher against Node\'s own ways of serving');
  p();
  p(`${env.date}; ${CPUS} CPUs; ${env.node}; ${env.go}; ${o.rounds} interleaved rounds of ${o.duration} s after ${o.warmup} s of warm-up, ` +
    `wrk -t1 -c${o.conns} (-c${o.oneshotConns} for oneshot and fork); load average ${env.loadBefore} before, ${env.loadAfter} after.`);
  p();
  const groups = new Map();
  for (const r of results) {
    const k = `${r.server}:${r.workload}`;
    if (!groups.has(k)) groups.set(k, []);
    groups.get(k).push(r);
  }
  p('| server | workload | wrk -c | req/s (median) | req/s min–max | p50 ms | p99 ms | CPU µs/req: all | leader | workers | cores: wrk / server / rest (max) | errors |');
  p('|---|---|--:|--:|---|--:|--:|--:|--:|--:|---|--:|');
  for (const [k, rs] of groups) {
    const [server, workload] = k.split(':');
    const m = (f) => median(rs.map(f));
    p(`| ${server} | ${workload} | ${rs[0].conns} | ${fmt(m((r) => r.rps))} | ${range(rs.map((r) => r.rps))} | ${m((r) => r.p50).toFixed(2)} | ${m((r) => r.p99).toFixed(2)} | ` +
      `${m((r) => r.cpu).toFixed(1)} | ${m((r) => r.leader).toFixed(1)} | ${m((r) => r.workers).toFixed(1)} | ` +
      `${m((r) => r.cores.wrk).toFixed(2)} / ${m((r) => r.cores.server).toFixed(2)} / ${m((r) => r.cores.rest).toFixed(2)} (${Math.max(...rs.map((r) => r.cores.rest)).toFixed(2)}) | ` +
      `${rs.reduce((n, r) => n + r.errors, 0)} |`);
  }
  p();
  p('leader: the dispatcher, the cluster primary, the fork master or the plain server; workers: the other processes of the server (live ' +
    'workers, and those the leader reaped: oneshot workers, forked children). rest: the machine\'s busy CPU less the server and wrk (other ' +
    'tenants, interrupts): the noise.');
  p();
  const ratios = [
    ['pool / cluster, hello', 'pool:hello', 'cluster:hello', 'aim ≥ 0.4'],
    ['pool / cluster, echo', 'pool:echo', 'cluster:echo', 'aim ≥ 0.4'],
    ['oneshot / fork, hello', 'oneshot:hello', 'fork:hello', 'aim ≥ 3'],
    ['pool (Node.js worker) / pool-go, hello', 'pool:hello', 'pool-go:hello', ''],
    ['pool / plain, hello', 'pool:hello', 'plain:hello', ''],
    ['oneshot-alt / fork, hello', 'oneshot-alt:hello', 'fork:hello', 'aim ≥ 3'],
    ['oneshot / oneshot-alt, hello', 'oneshot:hello', 'oneshot-alt:hello', ''],
    ['pool / pool-alt, hello', 'pool:hello', 'pool-alt:hello', ''],
  ];
  p('| ratio of req/s | median of the rounds\' ratios | each round | target |');
  p('|---|--:|---|---|');
  for (const [name, a, b, target] of ratios) {
    const per = [];
    for (let round = 1; round <= o.rounds; round++) {
      const x = results.find((r) => `${r.server}:${r.workload}` === a && r.round === round);
      const y = results.find((r) => `${r.server}:${r.workload}` === b && r.round === round);
      if (x && y && y.rps > 0) per.push(x.rps / y.rps);
    }
    if (per.length) p(`| ${name} | ${median(per).toFixed(3)} | ${per.map((x) => x.toFixed(3)).join(', ')} | ${target} |`);
  }
  p();
  const cpuOf = (k, f) => {
    const rs = groups.get(k);
    return rs ? median(rs.map(f)) : NaN;
  };
  p('CPU per request, hello (medians, µs):');
  p();
  p('| | µs/req |');
  p('|---|--:|');
  for (const [what, k, f] of [
    ['a Node.js worker under the dispatcher (pool: the workers\' CPU)', 'pool:hello', (r) => r.workers],
    ['the same with --alt-worker (pool-alt: the workers\' CPU)', 'pool-alt:hello', (r) => r.workers],
    ['a plain Node.js http server (plain)', 'plain:hello', (r) => r.cpu],
    ['a cluster worker (cluster: the workers\' CPU)', 'cluster:hello', (r) => r.workers],
    ['the dispatcher, with Node.js workers (pool: the leader)', 'pool:hello', (r) => r.leader],
    ['the dispatcher, with Go workers (pool-go: the leader)', 'pool-go:hello', (r) => r.leader],
    ['a Go worker (pool-go: the workers\' CPU)', 'pool-go:hello', (r) => r.workers],
    ['oneshot: everything (dispatcher and the worker started for the request)', 'oneshot:hello', (r) => r.cpu],
    ['oneshot: the workers started for the requests', 'oneshot:hello', (r) => r.workers],
    ['oneshot-alt: everything', 'oneshot-alt:hello', (r) => r.cpu],
    ['oneshot-alt: the workers started for the requests', 'oneshot-alt:hello', (r) => r.workers],
    ['fork: everything (master and the child forked for the request)', 'fork:hello', (r) => r.cpu],
    ['fork: the children forked for the requests', 'fork:hello', (r) => r.workers],
  ]) {
    if (groups.has(k)) p(`| ${what} | ${cpuOf(k, f).toFixed(1)} |`);
  }
  p();
  if (prof) {
    p(`CPU profiles (node --cpu-prof), hello at -c${o.conns}: busy time per request by category, µs (share of the process's busy time):`);
    p();
    p('| category | Node.js worker (pool) | plain http server |');
    p('|---|--:|--:|');
    // Per request: the busy time less the start-up's.
    const serving = (x) => x.busy - (x.cats.get(STARTUP) || 0);
    const cats = new Set([...prof.pool.cats.keys(), ...prof.plain.cats.keys()]);
    cats.delete(STARTUP);
    const per = (x, c) => {
      const t = x.cats.get(c) || 0;
      return `${(t / x.requests).toFixed(1)} (${((100 * t) / serving(x)).toFixed(0)}%)`;
    };
    for (const c of [...cats].sort((a, b) => (prof.pool.cats.get(b) || 0) - (prof.pool.cats.get(a) || 0))) {
      p(`| ${c} | ${per(prof.pool, c)} | ${per(prof.plain, c)} |`);
    }
    p(`| all | ${(serving(prof.pool) / prof.pool.requests).toFixed(1)} | ${(serving(prof.plain) / prof.plain.requests).toFixed(1)} |`);
    const ms = (x) => ((x.cats.get(STARTUP) || 0) / 1000 / x.profiles).toFixed(0);
    p(`| not counted: ${STARTUP}, ms per process | ${ms(prof.pool)} | ${ms(prof.plain)} |`);
    p();
  }
  p('Every round:');
  p();
  p('| round | server | workload | req/s | p99 ms | CPU µs/req | rest cores |');
  p('|--:|---|---|--:|--:|--:|--:|');
  for (const r of results) p(`| ${r.round} | ${r.server} | ${r.workload} | ${fmt(r.rps)} | ${r.p99.toFixed(2)} | ${r.cpu.toFixed(1)} | ${r.cores.rest.toFixed(2)} |`);
  return lines.join('\n') + '\n';
}

// --- main -------------------------------------------------------------------

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const cmd = (c, args, opts) => execFileSync(c, args, { encoding: 'utf8', ...opts }).trim();
  if (spawnSync('wrk', ['-v']).error) {
    if (process.getuid() !== 0) usage('wrk is not installed; run: sudo apt-get install -y wrk');
    log('installing wrk');
    execFileSync('apt-get', ['install', '-y', '-qq', 'wrk'], { stdio: 'ignore', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }, timeout: 300000 });
  }
  ALT = o.altWorker;
  BIN = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-node-'));
  const cleanup = () => fs.rmSync(BIN, { recursive: true, force: true });
  process.on('exit', cleanup);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => process.exit(130));
  log('building the dispatcher and the Go hello worker');
  cmd('go', ['build', '-o', BIN + '/', './cmd/dispatcher', './examples/hello'], { cwd: REPO, stdio: ['ignore', 'pipe', 'inherit'] });
  if (!fs.existsSync(path.join(REPO, 'sdk', 'node', 'node_modules', '@msgpack'))) {
    log('installing the sdk\'s dependencies (npm ci)');
    cmd('npm', ['ci', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: path.join(REPO, 'sdk', 'node'), stdio: ['ignore', 'pipe', 'inherit'] });
  }
  const env = {
    date: new Date().toISOString().slice(0, 16).replace('T', ' '),
    node: `Node.js ${process.version}`,
    go: cmd('go', ['version']).replace(/^go version /, ''),
    loadBefore: os.loadavg()[0].toFixed(2),
  };
  const results = [];
  for (let round = 1; round <= o.rounds; round++) {
    const runs = round % 2 ? o.runs : [...o.runs].reverse();
    for (const run of runs) {
      const [server, workload] = run.split(':');
      results.push(await measure(o, server, workload, round));
    }
  }
  const prof = o.profile ? await profile(o) : null;
  env.loadAfter = os.loadavg()[0].toFixed(2);
  const text = report(o, results, prof, env);
  process.stdout.write(text);
  if (o.out) fs.writeFileSync(o.out, text);
}

main().catch((err) => {
  log(`error: ${err.stack || err}`);
  process.exit(1);
});
