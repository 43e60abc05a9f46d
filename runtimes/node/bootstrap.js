// Petrel's Node.js runtime shim: runs a Lambda-style handler
// (`exports.handler = async (event, context) => ...`, or callback style) by speaking the AWS
// Lambda Runtime API at $AWS_LAMBDA_RUNTIME_API, as AWS's own runtime does.
//
// Shipped inside the petrel binary; started once per instance with the function's code in
// $LAMBDA_TASK_ROOT and the handler in $_HANDLER (module.function). $PETREL_CONCURRENCY loops poll
// for invocations, so an async handler may serve several at once when the function allows it.
'use strict';
const http = require('http');
const net = require('net');
const fs = require('fs');
const path = require('path');
const { pathToFileURL } = require('url');

// Set from the environment when the instance starts (at once, or after a standby process is
// handed its function).
let HOST;
let PORT;
const BASE = '/2018-06-01/runtime';

// A keep-alive HTTP/1.1 connection to the Runtime API, one request at a time, opened again after
// a failure. Petrel's Runtime API answers every request with a content-length, and the shim needs
// only the status, the headers and the body, so they are read straight off the socket: Node's
// http client cost more CPU per request than the rest of a hello invocation.
class RuntimeApi {
  constructor() {
    this.sock = null;
    this.buf = Buffer.alloc(0);
    this.waiting = null; // {resolve, reject} of the request in flight
  }

  connect() {
    const sock = net.connect({ host: HOST, port: Number(PORT) });
    sock.setNoDelay(true);
    sock.on('data', (chunk) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
      this.parse();
    });
    // A socket's failure (its 'error' and then its 'close') ends only the request sent on it,
    // never one already sent on the next connection.
    const fail = (err) => {
      if (this.sock === sock) this.sock = null;
      if (this.waiting && this.waiting.sock === sock) {
        this.settle((w) => w.reject(err || new Error('the Runtime API closed the connection')));
      }
    };
    sock.on('error', fail);
    sock.on('close', () => fail());
    this.sock = sock;
    this.buf = Buffer.alloc(0);
  }

  settle(how) {
    const w = this.waiting;
    this.waiting = null;
    if (w) how(w);
  }

  // Completes the request in flight once its whole answer is in the buffer.
  parse() {
    if (!this.waiting) return;
    const end = this.buf.indexOf('\r\n\r\n');
    if (end < 0) return;
    const lines = this.buf.toString('latin1', 0, end).split('\r\n');
    const headers = {};
    for (let i = 1; i < lines.length; i++) {
      const c = lines[i].indexOf(':');
      if (c > 0) headers[lines[i].slice(0, c).trim().toLowerCase()] = lines[i].slice(c + 1).trim();
    }
    if (headers['content-length'] === undefined) {
      this.sock.destroy(new Error('the Runtime API answered without a content-length'));
      return;
    }
    const bodyEnd = end + 4 + Number(headers['content-length']);
    if (this.buf.length < bodyEnd) return;
    const body = this.buf.subarray(end + 4, bodyEnd);
    this.buf = this.buf.subarray(bodyEnd);
    if ((headers.connection || '').toLowerCase() === 'close') {
      this.sock.destroy();
      this.sock = null;
    }
    this.settle((w) => w.resolve({ status: Number(lines[0].split(' ')[1]), headers, body }));
  }

  request(method, p, body, headers) {
    return new Promise((resolve, reject) => {
      if (!this.sock) this.connect();
      this.waiting = { resolve, reject, sock: this.sock };
      let head = `${method} ${p} HTTP/1.1\r\nHost: ${HOST}:${PORT}\r\n`;
      for (const k of Object.keys(headers || {})) head += `${k}: ${headers[k]}\r\n`;
      const data = body === undefined ? undefined : Buffer.from(body);
      if (data) head += `Content-Length: ${data.length}\r\n`;
      head += '\r\n';
      this.sock.write(data ? Buffer.concat([Buffer.from(head, 'latin1'), data]) : head, 'latin1');
    });
  }
}

function errorBody(err, errorType) {
  const e = err instanceof Error ? err : new Error(typeof err === 'string' ? err : JSON.stringify(err));
  return {
    errorType: errorType || e.name || 'Error',
    errorMessage: e.message,
    stackTrace: (e.stack || '').split('\n'),
  };
}

async function initError(err, errorType) {
  const body = errorBody(err, errorType);
  process.stderr.write(`init error: ${body.errorType}: ${body.errorMessage}\n`);
  try {
    await new RuntimeApi().request('POST', `${BASE}/init/error`, JSON.stringify(body), {
      'Content-Type': 'application/json',
      'Lambda-Runtime-Function-Error-Type': body.errorType,
    });
  } finally {
    process.exit(1);
  }
}

async function loadHandler() {
  const spec = process.env._HANDLER || '';
  const dot = spec.lastIndexOf('.');
  if (dot <= 0 || dot === spec.length - 1) {
    return initError(new Error(`handler '${spec}' is not module.function`), 'Runtime.MalformedHandlerName');
  }
  const moduleName = spec.slice(0, dot);
  const fnName = spec.slice(dot + 1);
  const root = process.env.LAMBDA_TASK_ROOT || process.cwd();
  const base = path.resolve(root, moduleName);
  const file = ['.js', '.mjs', '.cjs', ''].map((ext) => base + ext).find((f) => fs.existsSync(f) && fs.statSync(f).isFile());
  if (!file) {
    return initError(new Error(`Cannot find module '${moduleName}' in ${root} (tried .js, .mjs, .cjs)`), 'Runtime.ImportModuleError');
  }
  let mod;
  try {
    if (file.endsWith('.mjs')) {
      mod = await import(pathToFileURL(file).href);
    } else {
      try {
        mod = require(file);
      } catch (err) {
        if (err && err.code === 'ERR_REQUIRE_ESM') mod = await import(pathToFileURL(file).href);
        else throw err;
      }
    }
  } catch (err) {
    return initError(err, err instanceof SyntaxError ? 'Runtime.UserCodeSyntaxError' : 'Runtime.ImportModuleError');
  }
  const fn = mod && (mod[fnName] || (mod.default && mod.default[fnName]));
  if (typeof fn !== 'function') {
    return initError(new Error(`${moduleName}.${fnName} is undefined or not exported`), 'Runtime.HandlerNotFound');
  }
  return fn;
}

function makeContext(headers) {
  const deadline = Number(headers['lambda-runtime-deadline-ms'] || 0);
  const parse = (v) => { try { return v ? JSON.parse(v) : undefined; } catch (_) { return undefined; } };
  return {
    awsRequestId: headers['lambda-runtime-aws-request-id'],
    invokedFunctionArn: headers['lambda-runtime-invoked-function-arn'],
    functionName: process.env.AWS_LAMBDA_FUNCTION_NAME,
    functionVersion: process.env.AWS_LAMBDA_FUNCTION_VERSION,
    memoryLimitInMB: process.env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
    logGroupName: process.env.AWS_LAMBDA_LOG_GROUP_NAME,
    logStreamName: process.env.AWS_LAMBDA_LOG_STREAM_NAME,
    clientContext: parse(headers['lambda-runtime-client-context']),
    identity: parse(headers['lambda-runtime-cognito-identity']),
    callbackWaitsForEmptyEventLoop: true,
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
  };
}

function callHandler(handler, event, context) {
  return new Promise((resolve, reject) => {
    let settled = false;
    const done = (err, result) => {
      if (settled) return;
      settled = true;
      if (err !== undefined && err !== null) reject(err); else resolve(result);
    };
    context.done = done;
    context.succeed = (r) => done(null, r);
    context.fail = (e) => done(e || new Error('failed'));
    try {
      const ret = handler(event, context, done);
      if (ret && typeof ret.then === 'function') ret.then((r) => done(null, r), (e) => done(e || new Error('rejected')));
      else if (handler.length < 3) done(null, ret);
    } catch (err) {
      done(err);
    }
  });
}

// Petrel may refuse a body (a response over the limit) and close the connection: that ends this
// invocation, not the instance.
async function post(conn, p, body, headers) {
  try {
    await conn.request('POST', p, body, headers);
  } catch (err) {
    console.error(`could not report to the Runtime API: ${err.message}`);
  }
}

async function worker(handler) {
  const conn = new RuntimeApi();
  for (;;) {
    // A connection that dropped while waiting is opened again, and asked once more.
    const next = await conn.request('GET', `${BASE}/invocation/next`)
      .catch(() => conn.request('GET', `${BASE}/invocation/next`));
    const id = next.headers['lambda-runtime-aws-request-id'];
    if (next.headers['lambda-runtime-trace-id']) process.env._X_AMZN_TRACE_ID = next.headers['lambda-runtime-trace-id'];
    const context = makeContext(next.headers);
    try {
      const event = next.body.length ? JSON.parse(next.body.toString('utf8')) : null;
      const result = await callHandler(handler, event, context);
      const payload = JSON.stringify(result === undefined ? null : result);
      await post(conn, `${BASE}/invocation/${id}/response`, payload, { 'Content-Type': 'application/json' });
    } catch (err) {
      const body = errorBody(err);
      console.error(`[ERROR] ${body.errorType}: ${body.errorMessage}`);
      await post(conn, `${BASE}/invocation/${id}/error`, JSON.stringify(body), {
        'Content-Type': 'application/json',
        'Lambda-Runtime-Function-Error-Type': body.errorType,
      });
    }
  }
}

process.on('unhandledRejection', (reason) => {
  console.error('unhandled promise rejection:', reason);
  process.exit(128);
});

// Standby (`bootstrap.js --standby`): a generic runtime process started before any function
// needs it, with Node and this shim loaded. It reads one line of JSON from stdin, {"env": {...},
// "cwd": "..."}, becomes that instance, and carries on as if it had been started with them.
function specialise() {
  const chunks = [];
  const buf = Buffer.alloc(65536);
  for (;;) {
    let n;
    try {
      n = fs.readSync(0, buf, 0, buf.length, null);
    } catch (e) {
      if (e.code === 'EAGAIN') continue;
      throw e;
    }
    if (n === 0) process.exit(0); // Petrel let the standby go
    chunks.push(Buffer.from(buf.subarray(0, n)));
    if (buf.subarray(0, n).includes(10)) break;
  }
  const spec = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  for (const k of Object.keys(process.env)) delete process.env[k];
  Object.assign(process.env, spec.env);
  process.chdir(spec.cwd);
}

// A standby process runs a request of each kind through the shim's Runtime API client, against a
// Node HTTP server of its own, before it waits, so the code paths the loop uses (and Node's http
// module, which handlers commonly use) are loaded and compiled ahead of time.
async function warmUp() {
  const server = http.createServer((q, s) => {
    q.resume();
    q.on('end', () => {
      const body = JSON.stringify({ warm: true });
      s.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
      s.end(body);
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  [HOST, PORT] = ['127.0.0.1', String(server.address().port)];
  const conn = new RuntimeApi();
  for (let i = 0; i < 3; i++) {
    JSON.parse((await conn.request('GET', '/warm')).body.toString('utf8'));
    await conn.request('POST', '/warm', JSON.stringify({ warm: i }), { 'Content-Type': 'application/json' });
  }
  conn.sock.destroy();
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
}

(async () => {
  if (process.argv.includes('--standby')) {
    await warmUp();
    specialise();
  }
  [HOST, PORT] = process.env.AWS_LAMBDA_RUNTIME_API.split(':');
  const handler = await loadHandler();
  const workers = Math.max(1, Number(process.env.PETREL_CONCURRENCY || 1));
  await Promise.all(Array.from({ length: workers }, () => worker(handler)));
})();
