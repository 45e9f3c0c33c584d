#!/usr/bin/env node
// A tiny static file server for the demo and the browser tests (node only, no framework).
// Serves www/ at `/` and the repository's models/ at `/models/`, on 127.0.0.1 only.
//
//   node www/serve.mjs [--port 8080] [--mount /prefix=dir ...] [--no-isolation] [--quiet]
//
// Files are streamed (a 1 GB model never sits in this process's memory) with a
// Content-Length, which the page's progress bar and cache key need.
//
// Every response carries COOP/COEP, which make the pages cross-origin isolated: only then do
// browsers hand out SharedArrayBuffer, and the package runs its threaded wasm build (see
// README: what a host page needs). `--no-isolation` / `isolated: false` leaves them out
// (the package then runs its single-thread build).
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createServer } from 'node:http';
import { dirname, extname, join, normalize, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const www = dirname(fileURLToPath(import.meta.url));

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  // WebAssembly.instantiateStreaming refuses any other type.
  '.wasm': 'application/wasm',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
  '.ts': 'text/plain; charset=utf-8',
};

/**
 * Cross-origin isolation: the opener policy severs the page from cross-origin windows, the
 * embedder policy refuses subresources that do not opt in (same-origin ones and CORS fetches
 * do). A page needs both on its document; workers get them from their scripts' responses.
 */
export const ISOLATION_HEADERS = {
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-embedder-policy': 'require-corp',
};

/** `{'/': www, '/models/': <repo>/models}` plus extra mounts; longest prefix wins. */
export function defaultMounts() {
  return { '/': www, '/models/': resolve(www, '..', 'models') };
}

function locate(mounts, pathname) {
  const prefixes = Object.keys(mounts).sort((a, b) => b.length - a.length);
  for (const prefix of prefixes) {
    if (!pathname.startsWith(prefix)) continue;
    const root = resolve(mounts[prefix]);
    const file = normalize(join(root, pathname.slice(prefix.length)));
    // `..` in the URL must not escape the mounted folder.
    if (file !== root && !file.startsWith(root + sep)) return null;
    return file;
  }
  return null;
}

/**
 * Start serving. `port` 0 picks a free port. Resolves to `{url, server, close()}`.
 * `log` receives one line per request when given.
 */
export async function serve({ port = 8080, mounts = defaultMounts(), log = null, isolated = true } = {}) {
  const server = createServer(async (req, res) => {
    if (isolated) {
      for (const [name, value] of Object.entries(ISOLATION_HEADERS)) res.setHeader(name, value);
    }
    const done = (status, body = '') => {
      res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8' });
      res.end(body);
      log?.(`${status} ${req.method} ${req.url}`);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return done(405, 'method not allowed');
    let pathname;
    try {
      pathname = decodeURIComponent(new URL(req.url, 'http://127.0.0.1').pathname);
    } catch {
      return done(400, 'bad url');
    }
    let file = locate(mounts, pathname);
    if (!file) return done(404, 'not found');
    try {
      let info = await stat(file);
      if (info.isDirectory()) {
        if (!pathname.endsWith('/')) {
          res.writeHead(301, { location: `${pathname}/` });
          return res.end();
        }
        file = join(file, 'index.html');
        info = await stat(file);
      }
      res.writeHead(200, {
        'content-type': TYPES[extname(file)] ?? 'application/octet-stream',
        'content-length': info.size,
        'cache-control': 'no-cache',
        // nginx's form (size and mtime): the model cache keys its entries by it.
        etag: `W/"${info.size.toString(16)}-${Math.floor(info.mtimeMs).toString(16)}"`,
      });
      log?.(`200 ${req.method} ${req.url}`);
      if (req.method === 'HEAD') return res.end();
      createReadStream(file).on('error', () => res.destroy()).pipe(res);
    } catch {
      return done(404, 'not found');
    }
  });
  await new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(port, '127.0.0.1', ok);
  });
  const url = `http://127.0.0.1:${server.address().port}`;
  return { url, server, close: () => new Promise((ok) => server.close(ok)) };
}

function parseArgs(argv) {
  const opts = { port: 8080, mounts: defaultMounts(), isolated: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--port') opts.port = Number(argv[++i]);
    else if (a === '--mount') {
      const [prefix, dir] = String(argv[++i]).split('=');
      opts.mounts[prefix.endsWith('/') ? prefix : `${prefix}/`] = resolve(dir);
    } else if (a === '--quiet') opts.quiet = true;
    else if (a === '--no-isolation') opts.isolated = false;
    else throw new Error(`unknown argument '${a}'`);
  }
  return opts;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const opts = parseArgs(process.argv.slice(2));
  const { url } = await serve({ ...opts, log: opts.quiet ? null : (line) => console.log(line) });
  console.log(`Pensive demo: ${url}/demo/`);
}
