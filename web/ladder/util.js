// util.js: small helpers every part of the client shares — the injected
// clock, error text, abort errors, backoff, and the hex decoder for the
// WebTransport certificate hash. No state, no I/O.

/**
 * The clock the client reads and sets its timers on. Injected (the
 * `clock` option) so the race, the backoff waits and the re-probe can be
 * driven by a manual clock in tests, without real timers.
 */
export const realClock = {
  now: () => performance.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle),
};

/** Decodes a hex string (the contract's `cert_sha256`) into bytes. */
export function hexToBytes(hex) {
  const clean = String(hex).trim();
  if (!/^([0-9a-fA-F]{2})*$/.test(clean)) throw new Error(`not a hex string: ${hex}`);
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.substr(i * 2, 2), 16);
  return out;
}

/**
 * A random idempotency key for a publish: 32 hex digits from the platform's
 * CSPRNG (available in insecure contexts too, unlike `randomUUID`).
 */
export function newIdempotencyKey() {
  const b = new Uint8Array(16);
  globalThis.crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

/**
 * Whether a failed publish may be retried: it may not have reached the hub
 * (no answer: timeout, lost connection) or the hub could not take it then
 * (`unavailable`, a 5xx from something in between). Any other answer is a
 * refusal that a retry would only repeat.
 */
export function mayRetry(e) {
  const code = e?.code;
  return code === undefined || code === 'unavailable' || /^http_5/.test(code);
}

/**
 * Exponential backoff with full jitter: a uniform random delay between 0
 * and min(cap, base * 2^attempt). The jitter spreads reconnecting clients
 * out instead of having them all come back at the same instant.
 */
export function backoffDelay(attempt, baseMs, capMs, random = Math.random) {
  return Math.floor(random() * Math.min(capMs, baseMs * 2 ** attempt));
}

/** Resolves after `ms` on `clock`, or rejects with an AbortError when `signal` aborts. */
export function sleep(ms, signal, clock = realClock) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError());
    const t = clock.setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clock.clearTimeout(t); reject(abortError()); }, { once: true });
  });
}

/** Rejects with `${what} within ${ms} ms` if `promise` has not settled by then. */
export function withTimeout(promise, ms, what, clock = realClock) {
  let t;
  return Promise.race([
    promise,
    new Promise((_, reject) => { t = clock.setTimeout(() => reject(new Error(`${what} within ${ms} ms`)), ms); }),
  ]).finally(() => clock.clearTimeout(t));
}

export function abortError() {
  const e = new Error('aborted');
  e.name = 'AbortError';
  return e;
}

export function describe(err) {
  if (!err) return 'unknown error';
  return err.message || String(err);
}

/** A tiny event emitter; a throwing handler is reported, never breaks the others. */
export class Emitter {
  #handlers = new Map();
  on(event, fn) {
    if (!this.#handlers.has(event)) this.#handlers.set(event, new Set());
    this.#handlers.get(event).add(fn);
    return () => this.#handlers.get(event)?.delete(fn);
  }
  emit(event, detail) {
    for (const fn of this.#handlers.get(event) || []) {
      try { fn(detail); } catch (e) { setTimeout(() => { throw e; }); }
    }
  }
}
