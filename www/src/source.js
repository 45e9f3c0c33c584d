// Where model bytes come from: a URL, a Hugging Face reference, a File/Blob, or a folder-like
// set of files. A GGUF is always *streamed*: its bytes are handed on chunk by chunk as they
// arrive (network, cache or disk), so the page never holds the whole file (a 1.5B Q4 model
// is ~1.1 GB; wasm32 memory tops out at 4 GiB and browsers often give less).
import { PensiveError, toPensiveError } from './errors.js';

const HF_HOST = 'https://huggingface.co';
/** Bump when the cached layout changes; old caches are then simply ignored. */
export const CACHE_NAME = 'pensive-models-v1';
/** Cache keys are synthetic URLs (the Cache API wants http(s)); nothing is fetched from them. */
const CACHE_KEY_BASE = 'https://pensive-cache.invalid/model';
/** Bytes the cache writer may lag behind the loader before the download waits for it. */
const CACHE_BACKLOG = 64 * 2 ** 20;
/** Milliseconds without progress after which a cache write is abandoned. */
const CACHE_STALL_MS = 30_000;

/**
 * `hf:owner/repo/path/file.gguf` or `hf:owner/repo@revision/path/file.gguf` → the hub's
 * download URL. Anything else is returned unchanged.
 * @param {string} ref
 */
export function resolveModelUrl(ref) {
  if (!ref.startsWith('hf:')) return ref;
  const m = ref.slice(3).match(/^([^/@\s]+)\/([^/@\s]+)(?:@([^/\s]+))?\/(\S+)$/);
  if (!m) {
    throw new PensiveError('invalid_options', `bad Hugging Face reference '${ref}': expected hf:owner/repo[@revision]/file`);
  }
  const [, owner, repo, revision = 'main', file] = m;
  const path = file.split('/').map(encodeURIComponent).join('/');
  return `${HF_HOST}/${owner}/${repo}/resolve/${encodeURIComponent(revision)}/${path}`;
}

function absoluteUrl(url) {
  const base = globalThis.location?.href;
  try {
    return base ? new URL(url, base).href : new URL(url).href;
  } catch {
    throw new PensiveError('invalid_options', `model '${url}' is not a valid URL`);
  }
}

/**
 * A folder-like set: a FileList/array of Files (e.g. from `<input webkitdirectory>`) or an
 * object `{config, weights: [..], tokenizer}`; either way config.json + *.safetensors
 * (+ tokenizer.json). Returns null when `model` is not one.
 */
function asFolder(model, tokenizer) {
  const isFile = (f) => typeof Blob !== 'undefined' && f instanceof Blob;
  let files = null;
  if (typeof FileList !== 'undefined' && model instanceof FileList) files = [...model];
  else if (Array.isArray(model) && model.every(isFile)) files = model;
  if (files) {
    const byName = (pred) => files.filter((f) => pred(f.name ?? ''));
    const config = byName((n) => n.endsWith('config.json') && !n.endsWith('tokenizer_config.json'))[0];
    const weights = byName((n) => n.endsWith('.safetensors'));
    const tok = tokenizer ?? byName((n) => n.endsWith('tokenizer.json'))[0];
    // tokenizer_config.json carries the chat template (and BOS/EOS settings).
    const tokConfig = byName((n) => n.endsWith('tokenizer_config.json'))[0];
    if (!config || weights.length === 0) {
      throw new PensiveError('invalid_options', 'a folder model needs config.json and at least one .safetensors file');
    }
    return { config, weights, tokenizer: tok ?? null, tokenizerConfig: tokConfig ?? null };
  }
  if (model && typeof model === 'object' && !isFile(model) && 'config' in model && 'weights' in model) {
    return {
      config: model.config, weights: [...model.weights],
      tokenizer: tokenizer ?? model.tokenizer ?? null, tokenizerConfig: model.tokenizer_config ?? null,
    };
  }
  return null;
}

/** Read a Blob, URL or string-URL into an ArrayBuffer (small files: config, tokenizer). */
export async function readWhole(item, fetchImpl = fetch) {
  try {
    if (typeof Blob !== 'undefined' && item instanceof Blob) return new Uint8Array(await item.arrayBuffer());
    if (item instanceof ArrayBuffer) return new Uint8Array(item);
    if (ArrayBuffer.isView(item)) return new Uint8Array(item.buffer, item.byteOffset, item.byteLength);
    const url = absoluteUrl(resolveModelUrl(String(item)));
    const res = await fetchImpl(url);
    if (!res.ok) throw new PensiveError('io', `HTTP ${res.status} fetching ${url}`);
    return new Uint8Array(await res.arrayBuffer());
  } catch (e) {
    throw toPensiveError(e, 'io');
  }
}

async function openCache(enabled) {
  if (!enabled) return null;
  if (typeof caches === 'undefined') {
    console.warn('pensive: the Cache API is unavailable here (not a secure context?); models will not be cached');
    return null;
  }
  try {
    return await caches.open(CACHE_NAME);
  } catch (e) {
    console.warn(`pensive: cannot open the model cache (${e}); models will not be cached`);
    return null;
  }
}

/**
 * An entry's key: the URL, the size and the server's ETag when it sent one, so that a file
 * replaced on the server (same URL, another ETag or size) is told apart from the cached one.
 */
function cacheKey(url, size, etag) {
  const key = `${CACHE_KEY_BASE}?url=${encodeURIComponent(url)}&size=${size}`;
  return etag ? `${key}&etag=${encodeURIComponent(etag)}` : key;
}

/** Every entry, or those for `url`: `{request, url, size, etag}` (normally zero or one per URL). */
async function cachedEntries(cache, url = null) {
  const out = [];
  for (const request of await cache.keys()) {
    const key = new URL(request.url);
    if (key.origin + key.pathname !== CACHE_KEY_BASE) continue;
    const entryUrl = key.searchParams.get('url');
    if (url === null || entryUrl === url) {
      out.push({ request, url: entryUrl, size: Number(key.searchParams.get('size')), etag: key.searchParams.get('etag') });
    }
  }
  return out;
}

/** The URL a model reference is cached under (an `hf:` reference resolved, made absolute). */
function cachedUrl(model) {
  if (typeof model !== 'string' && !(model instanceof URL)) {
    throw new PensiveError('invalid_options', 'the model cache is keyed by URL: pass a URL or an hf: reference');
  }
  return absoluteUrl(resolveModelUrl(String(model)));
}

async function existingCache() {
  if (typeof caches === 'undefined' || !(await caches.has(CACHE_NAME))) return null;
  return caches.open(CACHE_NAME);
}

/**
 * `Pensive.cache`: what the model cache holds, per model. Entries are whole files (a partial
 * download is never stored); a cached model loads with no network at all, so a file changed
 * on the server is picked up after `delete(model)` (its new ETag or size then keys the new entry).
 */
export const modelCache = Object.freeze({
  /** `[{url, size, etag}]`, one per cached model file (`etag` null when the server sent none). */
  async list() {
    try {
      const cache = await existingCache();
      return cache ? (await cachedEntries(cache)).map(({ url, size, etag }) => ({ url, size, etag })) : [];
    } catch (e) {
      throw toPensiveError(e, 'io');
    }
  },
  /** Whether `model` (a URL or `hf:` reference) is cached. */
  async has(model) {
    const url = cachedUrl(model);
    try {
      const cache = await existingCache();
      return cache ? (await cachedEntries(cache, url)).length > 0 : false;
    } catch (e) {
      throw toPensiveError(e, 'io');
    }
  },
  /** Remove `model`'s cached file; resolves to whether there was one. */
  async delete(model) {
    const url = cachedUrl(model);
    try {
      const cache = await existingCache();
      if (!cache) return false;
      let deleted = false;
      for (const { request } of await cachedEntries(cache, url)) deleted = (await cache.delete(request)) || deleted;
      return deleted;
    } catch (e) {
      throw toPensiveError(e, 'io');
    }
  },
  /** Remove every cached model file. */
  async clear() {
    try {
      if (typeof caches !== 'undefined') await caches.delete(CACHE_NAME);
    } catch (e) {
      throw toPensiveError(e, 'io');
    }
  },
  /**
   * Ask the browser to keep the cache under storage pressure (`navigator.storage.persist()`;
   * it may say no, e.g. before the user interacted with the site). Resolves to its answer,
   * or false where the API is missing (workers, insecure contexts).
   */
  async persist() {
    try {
      return (await globalThis.navigator?.storage?.persist?.()) === true;
    } catch {
      return false;
    }
  },
});

/** Yield a ReadableStream's chunks; cancels the stream if the consumer stops early. */
async function* chunksOf(stream) {
  const reader = stream.getReader();
  let done = false;
  try {
    for (;;) {
      const r = await reader.read();
      if (r.done) {
        done = true;
        return;
      }
      yield r.value;
    }
  } finally {
    if (!done) await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}

/**
 * Open a model source. Returns either
 *   `{kind: 'gguf', name, total, origin: 'network'|'cache'|'file', chunks, settled}`
 * where `chunks` is an async iterable of Uint8Array and `settled` a promise that resolves
 * once any cache write finished (or failed with a warning), or
 *   `{kind: 'safetensors', name, config, weights, tokenizer}` (Blobs/URLs, read by the caller).
 * @param {*} model
 * @param {{cache?: boolean, tokenizer?: *, signal?: AbortSignal, fetch?: typeof fetch}} opts
 */
export async function openModelSource(model, { cache = true, tokenizer, signal, fetch: fetchImpl = fetch } = {}) {
  const folder = asFolder(model, tokenizer);
  if (folder) return { kind: 'safetensors', name: 'folder', ...folder };

  if (typeof Blob !== 'undefined' && model instanceof Blob) {
    return {
      kind: 'gguf', name: model.name ?? 'blob', total: model.size, origin: 'file',
      chunks: chunksOf(model.stream()), settled: Promise.resolve(),
    };
  }
  if (typeof model !== 'string' && !(model instanceof URL)) {
    throw new PensiveError('invalid_options', 'model must be a URL, an hf: reference, a File/Blob, or a folder set');
  }
  const url = absoluteUrl(resolveModelUrl(String(model)));
  const name = url.split('/').pop() || url;
  const store = await openCache(cache);

  if (store) {
    for (const { request, size } of await cachedEntries(store, url)) {
      const hit = await store.match(request);
      if (hit?.body) return { kind: 'gguf', name, total: size, origin: 'cache', chunks: chunksOf(hit.body), settled: Promise.resolve() };
    }
  }

  let res;
  try {
    res = await fetchImpl(url, { signal });
  } catch (e) {
    throw toPensiveError(e, 'io');
  }
  if (!res.ok || !res.body) throw new PensiveError('io', `HTTP ${res.status} fetching ${url}`);
  // With a Content-Encoding the length is of the compressed body, not of the bytes we read.
  const length = Number(res.headers.get('content-length'));
  const total = !res.headers.get('content-encoding') && Number.isFinite(length) && length > 0 ? length : null;
  const etag = res.headers.get('etag');

  if (!store || total === null) {
    if (store) console.warn(`pensive: not caching ${name}: the server did not send its size`);
    return { kind: 'gguf', name, total, origin: 'network', chunks: chunksOf(res.body), settled: Promise.resolve() };
  }
  // Each chunk goes to the loader and to a second stream that the Cache API writes to disk:
  // the file is downloaded once and never assembled in memory. Cache.put only commits a
  // complete body, so an interrupted download leaves no entry. When the cache side is
  // CACHE_BACKLOG bytes behind, the download waits for it (memory stays bounded and the
  // model is still cached on a busy machine); if the write fails (QuotaExceededError with a
  // big model in a small profile), caching is dropped with a warning and loading goes on.
  let cacheSide = null;
  let caching = true;
  let wake = null; // resolves the download's wait for room in the cache queue
  const wakeDownload = () => { wake?.(); wake = null; };
  const stopCaching = (why) => {
    if (!caching) return;
    caching = false;
    console.warn(`pensive: not caching ${name}: ${why}`);
    try { cacheSide.error(new Error(why)); } catch { /* already closed or errored */ }
    wakeDownload();
  };
  const forCache = new ReadableStream(
    {
      start(controller) { cacheSide = controller; },
      pull() { wakeDownload(); },
      cancel() { caching = false; wakeDownload(); },
    },
    { highWaterMark: CACHE_BACKLOG, size: (chunk) => chunk.byteLength },
  );
  const settled = (async () => {
    for (const { request } of await cachedEntries(store, url)) await store.delete(request);
    await store.put(cacheKey(url, total, etag), new Response(forCache, {
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(total) },
    }));
  })().catch((e) => stopCaching(`${e?.name ?? 'Error'}: ${e?.message ?? e}`));

  async function* chunks() {
    let complete = false;
    try {
      for await (const chunk of chunksOf(res.body)) {
        while (caching && cacheSide.desiredSize <= 0) {
          // A writer that makes no progress for CACHE_STALL_MS is given up on, never waited for forever.
          let timer;
          const room = new Promise((resolve) => { wake = resolve; });
          const stalled = new Promise((resolve) => { timer = setTimeout(() => resolve(true), CACHE_STALL_MS); });
          if (await Promise.race([room, stalled])) stopCaching('the cache write stalled');
          clearTimeout(timer);
        }
        if (caching) cacheSide.enqueue(chunk);
        yield chunk;
      }
      complete = true;
    } finally {
      if (caching && complete) cacheSide.close();
      else stopCaching('the download did not complete');
    }
  }
  return { kind: 'gguf', name, total, origin: 'network', chunks: chunks(), settled };
}
