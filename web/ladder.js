// ladder.js: Ladder's browser client, one API over every rung.
//
//   const ladder = new Ladder();                 // or new Ladder({ force: 'sse' })
//   await ladder.connect();                      // races the rungs, see below
//   const sub = ladder.subscribe('chat', { since: 0 }, (msg) => ...);
//   await ladder.publish('chat', { text: 'hi' });
//   ladder.close();
//
// Transport choice: WebTransport starts first. If it is not ready within
// `raceDelayMs` (about a second), WebSocket, SSE and long polling are started
// too, a little staggered so the better rung wins a near tie; the first one
// ready wins and the others are closed. The winner is remembered per origin
// (localStorage) so the next visit starts on it at once, and a better rung
// is re-probed later to upgrade back. `ladder.report` says which rung won and
// why each of the others lost.
//
// Delivery: every subscription keeps ONE resume cursor, (epoch, offset),
// shared by all rungs. After any drop, reconnect (exponential backoff with
// full jitter, capped) or transport switch, the subscription is resumed
// with `since` = the last offset delivered, and anything at or below that
// offset is dropped here, so the application never sees a gap or a
// repeat. When the server says `truncated` (history gone, or the channel's
// epoch changed) the cursor takes the new epoch and the application is told.
//
// /api/info is fetched on every (re)connect, so a rotated development
// certificate (WebTransport `serverCertificateHashes`) is picked up without
// reloading the page.
//
// Plain ES module, no dependencies, no build step.

/** The rungs, best first. Names are the contract's transport names. */
export const RUNGS = ['webtransport', 'websocket', 'sse', 'longpoll', 'poll'];

const DEFAULTS = {
  base: globalThis.location ? globalThis.location.origin : 'http://127.0.0.1:8080',
  transports: RUNGS,
  force: null,
  raceDelayMs: 1000,
  staggerMs: 250,
  probeTimeoutMs: 8000,
  backoffBaseMs: 500,
  backoffCapMs: 8000,
  pollIntervalMs: 1000,
  pollLimit: 500,
  longPollWaitS: 25,
  reprobeMs: 30000,
  impls: null,
  remember: true,
  wtUrl: null,
  publishTimeoutMs: 10000,
  // WebTransport liveness: QUIC over UDP gets no reset when the server dies,
  // so a silent session would only end at the QUIC idle timeout. An echo on
  // the control stream every livenessMs that is not answered within
  // livenessTimeoutMs ends the session at once and the client reconnects.
  livenessMs: 5000,
  livenessTimeoutMs: 3000,
};

const PROBE_CHANNEL = 'ladder.probe';

/** Decodes a hex string (the contract's `cert_sha256`) into bytes. */
export function hexToBytes(hex) {
  const clean = String(hex).trim();
  if (!/^([0-9a-fA-F]{2})*$/.test(clean)) throw new Error(`not a hex string: ${hex}`);
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.substr(i * 2, 2), 16);
  return out;
}

/**
 * Exponential backoff with full jitter: a uniform random delay between 0
 * and min(cap, base * 2^attempt). The jitter spreads reconnecting clients
 * out instead of having them all come back at the same instant.
 */
export function backoffDelay(attempt, baseMs, capMs, random = Math.random) {
  return Math.floor(random() * Math.min(capMs, baseMs * 2 ** attempt));
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError());
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(t); reject(abortError()); }, { once: true });
  });
}

function abortError() {
  const e = new Error('aborted');
  e.name = 'AbortError';
  return e;
}

function describe(err) {
  if (!err) return 'unknown error';
  return err.message || String(err);
}

function channelUrl(base, channel, tail, params) {
  const url = new URL(`/api/channels/${encodeURIComponent(channel)}/${tail}`, base);
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined) url.searchParams.set(k, v);
  return url.toString();
}

async function httpJson(fetchFn, url, init = {}) {
  const res = await fetchFn(url, { cache: 'no-store', ...init });
  let body = null;
  try { body = await res.json(); } catch { body = null; }
  if (!res.ok) {
    const code = body?.error?.code || `http_${res.status}`;
    const e = new Error(`${code}: ${body?.error?.message || res.statusText}`);
    e.status = res.status;
    e.code = code;
    throw e;
  }
  return body;
}

/** Publishes over plain HTTP: POST /api/channels/{channel}/messages. */
export async function httpPublish(base, channel, data, fetchFn = globalThis.fetch.bind(globalThis)) {
  return httpJson(fetchFn, channelUrl(base, channel, 'messages', {}), {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(data),
  });
}

class Emitter {
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

/**
 * One subscription to one channel. Its cursor survives every reconnect and
 * transport switch; `stats` counts what the client had to repair.
 */
export class Subscription {
  constructor(ladder, channel, opts, onMessage) {
    this.ladder = ladder;
    this.channel = channel;
    this.onMessage = onMessage;
    this.onTruncated = opts.onTruncated || null;
    this.delivery = opts.delivery === 'datagram' ? 'datagram' : 'stream';
    /** The one resume cursor: offset null = live only, not positioned yet. */
    this.cursor = {
      epoch: opts.epoch ?? null,
      offset: opts.since === undefined || opts.since === null ? null : Number(opts.since),
    };
    this.stats = { delivered: 0, duplicatesDropped: 0, gaps: 0, outOfOrder: 0, truncations: 0 };
    this.active = true;
    this.paused = false;
    /** Datagrams may arrive in any order: remember which offsets were seen. */
    this.seen = this.delivery === 'datagram' ? new Set() : null;
    this.ready = new Promise((resolve) => { this._resolveReady = resolve; });
  }

  /** Stops delivery and tells the server. */
  unsubscribe() {
    if (!this.active) return;
    this.active = false;
    this.ladder._unsubscribe(this);
  }

  /**
   * Stops reading this subscription's data. On WebTransport the stream is
   * left unread, so QUIC flow control pushes back on the server for this
   * stream alone; elsewhere deliveries are held in memory.
   */
  pause() { this.paused = true; this.ladder._transport?.pause?.(this.channel); }

  /** Resumes reading after `pause()`. */
  resume() {
    this.paused = false;
    this.ladder._transport?.resume?.(this.channel);
    const held = this._held || [];
    this._held = [];
    for (const [msg, epoch, via] of held) this.ladder._deliver(this, msg, epoch, via);
  }
}

/** The client. Events: state, open, report, reconnect, upgrade, truncated, gap, error. */
export class Ladder extends Emitter {
  constructor(options = {}) {
    super();
    this.options = { ...DEFAULTS, ...options };
    if (this.options.force) this.options.transports = [this.options.force];
    this.fetch = this.options.fetch || globalThis.fetch.bind(globalThis);
    /** idle | connecting | open | reconnecting | closed | unavailable */
    this.state = 'idle';
    this.transport = null;
    this.info = null;
    this.report = null;
    this.stats = { connects: 0, reconnects: 0, drops: 0, upgrades: 0 };
    this.lastDrop = null;
    this._subs = new Map();
    this._transport = null;
    this._attempt = 0;
    this._closed = false;
    this._timers = new Set();
    this._connecting = null;
  }

  _setState(state, detail) {
    this.state = state;
    this.emit('state', { state, transport: this.transport, ...detail });
  }

  _later(ms, fn) {
    const t = setTimeout(() => { this._timers.delete(t); fn(); }, ms);
    this._timers.add(t);
  }

  get storageKey() { return `ladder.rung:${new URL(this.options.base).origin}`; }

  _remembered() {
    if (!this.options.remember || this.options.force) return null;
    try { return JSON.parse(globalThis.localStorage.getItem(this.storageKey))?.rung || null; } catch { return null; }
  }

  _remember(rung) {
    if (!this.options.remember || this.options.force) return;
    try { globalThis.localStorage.setItem(this.storageKey, JSON.stringify({ rung, at: Date.now() })); } catch { /* private mode */ }
  }

  /** Connects (racing the rungs) and keeps reconnecting until `close()`. */
  connect() {
    if (!this._connecting) this._connecting = this._connectLoop(false);
    return this._connecting;
  }

  async _connectLoop(isReconnect) {
    this._setState(isReconnect ? 'reconnecting' : 'connecting');
    if (isReconnect) {
      // Even the first retry waits a jittered moment, so clients cut off
      // together (a server restart) do not all come back in the same instant.
      await new Promise((r) => this._later(backoffDelay(this._attempt++, this.options.backoffBaseMs, this.options.backoffCapMs), r));
    }
    for (;;) {
      if (this._closed) throw new Error('closed');
      try {
        await this._openOnce();
        this._attempt = 0;
        return this.transport;
      } catch (err) {
        if (this._closed) throw err;
        if (err.unavailable) {
          this._setState('unavailable', { reason: describe(err) });
          this.emit('error', err);
          throw err;
        }
        const delay = backoffDelay(this._attempt++, this.options.backoffBaseMs, this.options.backoffCapMs);
        this._setState('reconnecting', { reason: describe(err), retryInMs: delay });
        this.emit('error', err);
        await new Promise((r) => this._later(delay, r));
      }
    }
  }

  async _fetchInfo() {
    this.info = await httpJson(this.fetch, new URL('/api/info', this.options.base).toString());
    return this.info;
  }

  async _openOnce() {
    const info = await this._fetchInfo();
    const { winner, report } = await this._race(info);
    if (this._closed) { winner.close(); throw new Error('closed'); }
    this._adopt(winner, report);
  }

  /** Makes `tr` the current transport and resumes every subscription on it. */
  _adopt(tr, report) {
    const old = this._transport;
    this._transport = tr;
    this.transport = tr.name;
    this.report = report;
    if (this.stats.connects++ > 0 && report.reason !== 'upgrade') this.stats.reconnects++;
    if (this.lastDrop && !this.lastDrop.resumedAt) this.lastDrop.resumedAt = performance.now();
    this._remember(tr.name);
    for (const sub of this._subs.values()) tr.subscribe(sub);
    if (old && old !== tr) old.close();
    this._setState('open');
    this.emit('report', report);
    this.emit('open', { transport: tr.name, report });
    this._scheduleReprobe(offeredRungs(this.info, this.options.transports, this.options.impls), tr.name);
  }

  _makeTransport(name) {
    const Impl = this.options.impls?.[name] || TRANSPORTS[name];
    return new Impl(this, this.info);
  }

  /**
   * Races the offered rungs. Returns the first transport that is ready,
   * plus a report naming every rung and why it lost.
   */
  _race(info) {
    const o = this.options;
    const report = { winner: null, reason: '', losers: {}, startedAt: Date.now(), elapsedMs: null };
    const offered = [];
    for (const name of o.transports) {
      const why = unavailableReason(name, info, this.options.impls);
      if (why) report.losers[name] = why; else offered.push(name);
    }
    if (offered.length === 0) {
      const e = new Error(o.force ? `${o.force}: ${report.losers[o.force]}` : 'no rung is available');
      e.unavailable = true;
      report.reason = e.message;
      this.report = report;
      this.emit('report', report);
      return Promise.reject(e);
    }
    // Order of the race: a remembered winner goes first (no visible wait on
    // a network where the best rung is known not to work), else best first.
    const remembered = this._remembered();
    const order = [...offered];
    let head = order[0];
    if (remembered && offered.includes(remembered)) {
      order.splice(order.indexOf(remembered), 1);
      order.unshift(remembered);
      head = remembered;
    }
    const t0 = performance.now();
    return new Promise((resolve, reject) => {
      let winner = null;
      let failed = 0;
      let started = 0;
      const live = new Map();
      const timers = [];
      const startNext = () => {
        if (winner || started >= order.length) return;
        const name = order[started++];
        const tr = this._makeTransport(name);
        live.set(name, tr);
        tr.open().then(() => {
          const ms = Math.round(performance.now() - t0);
          live.delete(name);
          if (winner) {
            report.losers[name] = `ready after ${ms} ms, later than ${winner.name}`;
            tr.close();
            return;
          }
          winner = tr;
          report.winner = name;
          report.elapsedMs = ms;
          report.reason = order.length === 1 ? `only candidate, ready in ${ms} ms`
            : name === head && started === 1 ? `first choice${remembered === name ? ' (remembered)' : ''}, ready in ${ms} ms`
              : `first ready, in ${ms} ms`;
          timers.forEach(clearTimeout);
          for (const [other, otr] of live) {
            report.losers[other] = `not ready after ${ms} ms, when ${name} was`;
            otr.close();
          }
          live.clear();
          for (const name2 of order.slice(started)) report.losers[name2] = `not tried: ${name} was ready first`;
          resolve({ winner: tr, report });
        }, (err) => {
          const ms = Math.round(performance.now() - t0);
          live.delete(name);
          if (winner && report.losers[name]) return; // closed because it lost
          report.losers[name] = `failed after ${ms} ms: ${describe(err)}`;
          failed++;
          if (winner) return;
          if (failed === order.length) {
            timers.forEach(clearTimeout);
            const e = new Error(`every rung failed (${order.map((n) => `${n}: ${report.losers[n]}`).join('; ')})`);
            report.reason = e.message;
            this.report = report;
            this.emit('report', report);
            reject(e);
          } else if (live.size === 0) {
            startNext(); // nothing left in flight: start the next rung now
          }
        });
      };
      startNext();
      // The first rung alone for raceDelayMs, then the rest, staggered.
      for (let i = 1; i < order.length; i++) {
        timers.push(setTimeout(startNext, o.raceDelayMs + (i - 1) * o.staggerMs));
      }
      timers.push(setTimeout(() => {
        if (winner) return;
        for (const [name, tr] of live) { report.losers[name] = `not ready within ${o.probeTimeoutMs} ms`; tr.close(); }
        live.clear();
        const e = new Error(`no rung ready within ${o.probeTimeoutMs} ms`);
        report.reason = e.message;
        reject(e);
      }, o.probeTimeoutMs + order.length * o.staggerMs));
    });
  }

  /**
   * After settling below the best offered rung, try the better ones again
   * later; if one opens, switch to it (the cursors make the switch lossless).
   */
  _scheduleReprobe(offered, current) {
    if (this.options.force || !this.options.reprobeMs) return;
    const better = offered.slice(0, offered.indexOf(current));
    if (better.length === 0) return;
    this._later(this.options.reprobeMs, async () => {
      if (this._closed || this.transport !== current || this.state !== 'open') return;
      for (const name of better) {
        const tr = this._makeTransport(name);
        try {
          await withTimeout(tr.open(), this.options.probeTimeoutMs, `${name} not ready`);
        } catch (err) {
          tr.close();
          if (this.report) this.report.losers[name] = `re-probe failed: ${describe(err)}`;
          continue;
        }
        if (this._closed || this.transport !== current) { tr.close(); return; }
        this.stats.upgrades++;
        const report = { winner: name, reason: 'upgrade', losers: { ...(this.report?.losers || {}) }, startedAt: Date.now(), elapsedMs: 0 };
        delete report.losers[name];
        report.losers[current] = `replaced by ${name} on re-probe`;
        this._adopt(tr, report);
        this.emit('upgrade', { from: current, to: name });
        return;
      }
      this._scheduleReprobe(offered, current);
    });
  }

  /** Called by a transport when its connection is gone. */
  _transportClosed(tr, reason) {
    if (tr !== this._transport || this._closed) return;
    this._transport = null;
    this._connecting = this._connectLoop(true).catch(() => {});
    this.emit('reconnect', { reason });
  }

  /**
   * Drops the current connection as a network failure would (for demos and
   * tests); the client reconnects with backoff and resumes every cursor.
   */
  drop() {
    const tr = this._transport;
    if (!tr) return false;
    this.stats.drops++;
    this.lastDrop = { at: performance.now(), resumedAt: null, transport: tr.name };
    tr.close();
    this._transportClosed(tr, 'dropped by the application');
    return true;
  }

  /** Subscribes to a channel. `opts`: since, epoch, delivery ('datagram' on WebTransport), onTruncated. */
  subscribe(channel, opts = {}, onMessage = () => {}) {
    if (typeof opts === 'function') { onMessage = opts; opts = {}; }
    if (this._subs.has(channel)) throw new Error(`already subscribed to ${channel}`);
    const sub = new Subscription(this, channel, opts, onMessage);
    this._subs.set(channel, sub);
    this._transport?.subscribe(sub);
    return sub;
  }

  _unsubscribe(sub) {
    if (this._subs.get(sub.channel) !== sub) return;
    this._subs.delete(sub.channel);
    this._transport?.unsubscribe(sub.channel);
  }

  /** Publishes over the current rung when it can carry it, else POST. */
  async publish(channel, data) {
    const tr = this._transport;
    if (tr && tr.publish) return tr.publish(channel, data);
    return httpPublish(this.options.base, channel, data, this.fetch);
  }

  /** Updates the short-poll interval live. */
  setPollInterval(ms) { this.options.pollIntervalMs = Math.max(10, Number(ms) || 1000); this._transport?.kick?.(); }

  close() {
    this._closed = true;
    for (const t of this._timers) clearTimeout(t);
    this._timers.clear();
    this._transport?.close();
    this._transport = null;
    this._setState('closed');
  }

  // ---- called by transports -------------------------------------------

  _sub(channel) {
    const sub = this._subs.get(channel);
    return sub && sub.active ? sub : null;
  }

  _subscribed(channel, epoch, head) {
    const sub = this._sub(channel);
    if (!sub) return;
    if (epoch && sub.cursor.epoch === null) sub.cursor.epoch = epoch;
    if (sub.cursor.offset === null && Number.isFinite(head)) sub.cursor.offset = head;
    sub._resolveReady({ epoch, head });
  }

  _truncated(channel, oldest, epoch) {
    const sub = this._sub(channel);
    if (!sub) return;
    const before = { ...sub.cursor };
    const newEpoch = epoch && epoch !== before.epoch;
    const next = Math.max(0, Number(oldest) - 1);
    if (newEpoch || before.offset === null || next > before.offset) {
      sub.cursor.offset = next;
    }
    if (epoch) sub.cursor.epoch = epoch;
    if (sub.seen) sub.seen.clear();
    sub.stats.truncations++;
    const detail = { channel, oldest, epoch, previous: before };
    sub.onTruncated?.(detail);
    this.emit('truncated', detail);
  }

  /**
   * The server dropped this subscription for being too slow: subscribe
   * again from the cursor (the contract's `lagged` recovery).
   */
  _lagged(channel) {
    const sub = this._sub(channel);
    const tr = this._transport;
    if (!sub || !tr) return;
    sub.stats.lagged = (sub.stats.lagged || 0) + 1;
    tr.unsubscribe(channel);
    tr.subscribe(sub);
    this.emit('lagged', { channel, cursor: { ...sub.cursor } });
  }

  /** Every message from every rung goes through here: order and dedupe by offset. */
  _deliver(sub, msg, epoch, via = null) {
    if (!sub || !sub.active) return;
    if (sub.paused) { (sub._held ||= []).push([msg, epoch, via]); return; }
    const offset = Number(msg.offset);
    if (epoch && sub.cursor.epoch === null) sub.cursor.epoch = epoch;
    if (sub.seen) {
      // Datagrams: unordered and unreliable by nature. Drop repeats, note
      // reordering, keep the cursor at the highest offset seen.
      if (sub.seen.has(offset) || (sub.cursor.offset !== null && offset <= sub.cursor.offset - 4096)) {
        sub.stats.duplicatesDropped++;
        return;
      }
      sub.seen.add(offset);
      if (sub.seen.size > 8192) sub.seen.delete(sub.seen.values().next().value);
      if (sub.cursor.offset !== null && offset < sub.cursor.offset) sub.stats.outOfOrder++;
      sub.cursor.offset = sub.cursor.offset === null ? offset : Math.max(sub.cursor.offset, offset);
    } else {
      if (sub.cursor.offset !== null && offset <= sub.cursor.offset) {
        sub.stats.duplicatesDropped++;
        return;
      }
      if (sub.cursor.offset !== null && offset > sub.cursor.offset + 1) {
        const missing = offset - sub.cursor.offset - 1;
        sub.stats.gaps += missing;
        this.emit('gap', { channel: sub.channel, after: sub.cursor.offset, missing });
      }
      sub.cursor.offset = offset;
    }
    sub.stats.delivered++;
    if (via === 'datagram') sub.stats.datagrams = (sub.stats.datagrams || 0) + 1;
    sub._resolveReady({ epoch: sub.cursor.epoch, head: null });
    const clean = { channel: msg.channel, offset, data: msg.data, ts: msg.ts };
    try { sub.onMessage(clean, sub); } catch (e) { setTimeout(() => { throw e; }); }
  }

  _message(msg, epoch, via = null) { this._deliver(this._sub(msg.channel), msg, epoch, via); }
}

function withTimeout(promise, ms, what) {
  let t;
  return Promise.race([
    promise,
    new Promise((_, reject) => { t = setTimeout(() => reject(new Error(`${what} within ${ms} ms`)), ms); }),
  ]).finally(() => clearTimeout(t));
}

function offeredRungs(info, wanted, impls) {
  return wanted.filter((n) => !unavailableReason(n, info, impls));
}

/** Why a rung cannot even be tried, or null. `impls` are test doubles. */
function unavailableReason(name, info, impls) {
  if (!TRANSPORTS[name]) return 'unknown rung';
  if (!info?.transports?.includes(name)) return 'not offered by the server (/api/info)';
  if (impls?.[name]) return null;
  if (name === 'webtransport') {
    if (typeof globalThis.WebTransport !== 'function') return 'this browser has no WebTransport';
    if (!info.webtransport?.url) return 'the server gave no WebTransport URL';
  }
  if (name === 'websocket' && typeof globalThis.WebSocket !== 'function') return 'this browser has no WebSocket';
  if (name === 'sse' && typeof globalThis.EventSource !== 'function') return 'this browser has no EventSource';
  return null;
}

/** Routes one server→client operation (WebSocket frame or WebTransport line). */
function dispatchOp(ladder, tr, op) {
  switch (op.op) {
    case 'message': ladder._message(op, null); break;
    case 'subscribed': ladder._subscribed(op.channel, op.epoch, Number(op.offset)); break;
    case 'truncated': ladder._truncated(op.channel, op.oldest, op.epoch); break;
    case 'published': tr._settle(op.id, null, op); break;
    case 'echo': tr._settle(op.id ?? op.data?.id, null, op); break;
    case 'lagged': ladder._lagged(op.channel); break;
    case 'unsubscribed': break;
    case 'error':
      if (op.id !== undefined && tr._settle(op.id, new Error(`${op.code}: ${op.message}`))) break;
      ladder.emit('error', new Error(`${op.code}: ${op.message}`));
      break;
    default: break;
  }
}

function subscribeOp(sub, extra = {}) {
  const op = { op: 'subscribe', channel: sub.channel, ...extra };
  if (sub.cursor.offset !== null) op.since = sub.cursor.offset;
  if (sub.cursor.epoch !== null) op.epoch = sub.cursor.epoch;
  return op;
}

/** Shared request/response bookkeeping for the two duplex rungs. */
class Duplex {
  constructor(ladder, info) {
    this.ladder = ladder;
    this.info = info;
    this._pending = new Map();
    this._nextId = 1;
    this.closed = false;
  }
  _settle(id, err, value) {
    const p = this._pending.get(id);
    if (!p) return false;
    this._pending.delete(id);
    clearTimeout(p.timer);
    if (err) p.reject(err); else p.resolve(value);
    return true;
  }
  _request(op) {
    const id = `c${this._nextId++}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this._settle(id, new Error(`${op.op} timed out`)), this.ladder.options.publishTimeoutMs);
      this._pending.set(id, { resolve, reject, timer });
      Promise.resolve(this._send({ ...op, id })).catch((e) => this._settle(id, e));
    });
  }
  async publish(channel, data) {
    const r = await this._request({ op: 'publish', channel, data });
    return { channel: r.channel, epoch: r.epoch, offset: r.offset };
  }
  _failAll(reason) {
    for (const id of [...this._pending.keys()]) this._settle(id, new Error(reason));
  }
  _lost(reason) {
    if (this.closed) return;
    this.closed = true;
    this._failAll(reason);
    this.ladder._transportClosed(this, reason);
  }
}

class WebSocketTransport extends Duplex {
  get name() { return 'websocket'; }

  open() {
    const url = new URL('/api/ws', this.ladder.options.base);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url.toString());
      this.ws = ws;
      let opened = false;
      ws.onopen = () => { opened = true; resolve(); };
      ws.onerror = () => { if (!opened) reject(new Error('WebSocket handshake failed')); };
      ws.onclose = (ev) => {
        if (!opened) { reject(new Error(`WebSocket closed before opening (code ${ev.code})`)); return; }
        this._lost(`WebSocket closed (code ${ev.code}${ev.reason ? `, ${ev.reason}` : ''})`);
      };
      ws.onmessage = (ev) => {
        if (typeof ev.data !== 'string') return;
        let op;
        try { op = JSON.parse(ev.data); } catch { return; }
        dispatchOp(this.ladder, this, op);
      };
    });
  }
  _send(op) {
    if (this.ws?.readyState !== WebSocket.OPEN) throw new Error('WebSocket not open');
    this.ws.send(JSON.stringify(op));
  }
  subscribe(sub) { try { this._send(subscribeOp(sub)); } catch { /* resubscribed on reconnect */ } }
  unsubscribe(channel) { try { this._send({ op: 'unsubscribe', channel }); } catch { /* gone anyway */ } }
  close() {
    this.closed = true;
    this._failAll('closed');
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, 'client closed');
  }
}

/** Reads newline-delimited JSON from a WebTransport stream, honouring pause. */
class LineStream {
  constructor(stream, onOp, onEnd) {
    this.stream = stream;
    this.writer = stream.writable.getWriter();
    this.reader = stream.readable.getReader();
    this.onOp = onOp;
    this.onEnd = onEnd;
    this.paused = false;
    this._resume = null;
    this.encoder = new TextEncoder();
    this._run();
  }
  async _run() {
    const decoder = new TextDecoder();
    let buf = '';
    try {
      for (;;) {
        await this._whilePaused();
        const { value, done } = await this.reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          await this._whilePaused(); // a pause takes effect between lines
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (!line) continue;
          let op;
          try { op = JSON.parse(line); } catch { continue; }
          this.onOp(op);
        }
      }
      this.onEnd?.(null);
    } catch (err) {
      this.onEnd?.(err);
    }
  }
  async _whilePaused() {
    while (this.paused) await new Promise((r) => { this._resume = r; });
  }
  send(op) { return this.writer.write(this.encoder.encode(`${JSON.stringify(op)}\n`)); }
  pause() { this.paused = true; }
  resume() { this.paused = false; this._resume?.(); this._resume = null; }
  close() {
    this.onEnd = null;
    this.writer.close().catch(() => {});
    this.reader.cancel().catch(() => {});
  }
}

/**
 * WebTransport: one bidirectional stream per subscription (so a stalled
 * channel cannot hold up another), one more for publishes, and the session's
 * datagrams for subscriptions made with `delivery: 'datagram'`.
 */
class WebTransportTransport extends Duplex {
  get name() { return 'webtransport'; }

  async open() {
    const wt = this.info.webtransport;
    const url = this.ladder.options.wtUrl || wt.url;
    const opts = {};
    if (wt.cert_sha256) {
      opts.serverCertificateHashes = [{ algorithm: 'sha-256', value: hexToBytes(wt.cert_sha256) }];
    }
    let session;
    try {
      session = new WebTransport(url, opts);
    } catch (err) {
      throw new Error(`WebTransport refused: ${describe(err)}`);
    }
    this.session = session;
    this.streams = new Map();
    session.closed.then(
      (info) => this._lost(`WebTransport session closed${info?.reason ? `: ${info.reason}` : ''}`),
      (err) => this._lost(`WebTransport session lost: ${describe(err)}`),
    );
    try {
      await session.ready;
    } catch (err) {
      this.closed = true;
      throw new Error(`WebTransport handshake failed: ${describe(err)}`);
    }
    if (this.closed) throw new Error('WebTransport closed while connecting');
    const every = this.ladder.options.livenessMs;
    if (every > 0) this._liveness = setInterval(() => this._checkAlive(), every);
  }

  /** Echoes on the control stream; no answer in time means the session is dead. */
  async _checkAlive() {
    if (this.closed || this._checking) return;
    this._checking = true;
    const id = `live${this._nextId++}`;
    const answered = new Promise((resolve, reject) => {
      const timer = setTimeout(() => this._settle(id, new Error('no answer to a liveness echo')), this.ladder.options.livenessTimeoutMs);
      this._pending.set(id, { resolve, reject, timer });
    });
    try {
      await this._send({ op: 'echo', data: { id } });
      await answered;
    } catch (err) {
      this._lost(`WebTransport session unresponsive: ${describe(err)}`);
    } finally {
      this._checking = false;
    }
  }

  _lost(reason) {
    clearInterval(this._liveness);
    super._lost(reason);
  }

  async _control() {
    if (!this._controlStream) {
      this._controlStream = this.session.createBidirectionalStream().then((s) => new LineStream(
        s, (op) => dispatchOp(this.ladder, this, op), (err) => { if (err) this._lost(`control stream failed: ${describe(err)}`); },
      ));
    }
    return this._controlStream;
  }

  async _send(op) { (await this._control()).send(op); }

  async subscribe(sub) {
    const channel = sub.channel;
    const extra = sub.delivery === 'datagram' ? { delivery: 'datagram' } : {};
    if (sub.delivery === 'datagram') this._readDatagrams();
    try {
      const stream = await this.session.createBidirectionalStream();
      if (this.closed || this.ladder._sub(channel) !== sub) { stream.writable.close().catch(() => {}); return; }
      const ls = new LineStream(stream, (op) => dispatchOp(this.ladder, this, op), (err) => {
        if (this.streams.get(channel) === ls) this.streams.delete(channel);
        if (err && !this.closed) this._lost(`stream for ${channel} failed: ${describe(err)}`);
      });
      this.streams.set(channel, ls);
      if (sub.paused) ls.pause();
      await ls.send(subscribeOp(sub, extra));
    } catch (err) {
      if (!this.closed) this._lost(`could not open a stream for ${channel}: ${describe(err)}`);
    }
  }

  unsubscribe(channel) {
    const ls = this.streams.get(channel);
    if (!ls) return;
    this.streams.delete(channel);
    ls.send({ op: 'unsubscribe', channel }).catch(() => {});
    ls.close();
  }

  pause(channel) { this.streams.get(channel)?.pause(); }
  resume(channel) { this.streams.get(channel)?.resume(); }

  async _readDatagrams() {
    if (this._datagrams) return;
    this._datagrams = true;
    const reader = this.session.datagrams.readable.getReader();
    const decoder = new TextDecoder();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        let op;
        try { op = JSON.parse(decoder.decode(value)); } catch { continue; }
        if (op.op === 'message') this.ladder._message(op, null, 'datagram');
        else dispatchOp(this.ladder, this, op);
      }
    } catch { /* the session's closed promise reports the loss */ }
  }

  /** Sends `{"op":"echo"}` as a datagram and waits for it to come back. */
  async echoDatagram(data) {
    this._readDatagrams();
    const id = `d${this._nextId++}`;
    const writer = this.session.datagrams.writable.getWriter();
    const p = new Promise((resolve, reject) => {
      const timer = setTimeout(() => this._settle(id, new Error('datagram echo timed out')), 2000);
      this._pending.set(id, { resolve, reject, timer });
    });
    await writer.write(new TextEncoder().encode(JSON.stringify({ op: 'echo', id, data: { id, ...data } })));
    writer.releaseLock();
    return p;
  }

  close() {
    clearInterval(this._liveness);
    if (this.closed) return;
    this.closed = true;
    this._failAll('closed');
    try { this.session?.close({ closeCode: 0, reason: 'client closed' }); } catch { /* already closed */ }
  }
}

/** Base of the three plain-HTTP rungs: publishes by POST, no `publish` op. */
class HttpRung {
  constructor(ladder, info) {
    this.ladder = ladder;
    this.info = info;
    this.closed = false;
    this.subs = new Map();
  }
  get base() { return this.ladder.options.base; }
  _lost(reason) {
    if (this.closed) return;
    this.close();
    this.ladder._transportClosed(this, reason);
  }
  unsubscribe(channel) { this.subs.get(channel)?.stop(); this.subs.delete(channel); }
  close() {
    this.closed = true;
    for (const s of this.subs.values()) s.stop();
    this.subs.clear();
  }
}

/** SSE: one EventSource per channel; the library, not EventSource, retries. */
class SseTransport extends HttpRung {
  get name() { return 'sse'; }

  open() {
    // Ready = an event stream actually opens on this origin.
    return new Promise((resolve, reject) => {
      const es = new EventSource(channelUrl(this.base, PROBE_CHANNEL, 'events', {}));
      this._probe = es;
      es.onopen = () => { es.close(); resolve(); };
      es.onerror = () => { es.close(); reject(new Error('event stream refused')); };
    });
  }

  subscribe(sub) {
    const c = sub.cursor;
    const es = new EventSource(channelUrl(this.base, sub.channel, 'events', { since: c.offset, epoch: c.epoch }));
    const entry = { stop: () => es.close() };
    this.subs.set(sub.channel, entry);
    es.onopen = () => this.ladder._subscribed(sub.channel, null, NaN);
    es.addEventListener('message', (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      const epoch = typeof ev.lastEventId === 'string' && ev.lastEventId.includes(':')
        ? ev.lastEventId.slice(0, ev.lastEventId.lastIndexOf(':')) : null;
      this.ladder._deliver(this.ladder._sub(sub.channel), { channel: sub.channel, ...msg }, epoch);
    });
    es.addEventListener('truncated', (ev) => {
      let t;
      try { t = JSON.parse(ev.data); } catch { return; }
      this.ladder._truncated(sub.channel, t.oldest, t.epoch);
    });
    es.onerror = () => {
      if (this.subs.get(sub.channel) !== entry) return;
      es.close();
      this._lost(`event stream for ${sub.channel} ended`);
    };
  }

  close() {
    this._probe?.close();
    super.close();
  }
}

/** Long polling and short polling: the same GET, with or without `wait`. */
class PollTransport extends HttpRung {
  get name() { return 'poll'; }
  get waitS() { return null; }

  async open() {
    // Ready = one real request of this kind succeeds.
    await httpJson(this.ladder.fetch, channelUrl(this.base, PROBE_CHANNEL, 'messages', { wait: this.waitS === null ? null : 0 }));
  }

  subscribe(sub) {
    const ctrl = new AbortController();
    const entry = { stop: () => ctrl.abort(), kick: null };
    this.subs.set(sub.channel, entry);
    this._loop(sub, ctrl.signal, entry).catch((err) => {
      if (err.name !== 'AbortError' && this.subs.get(sub.channel) === entry) this._lost(`${this.name} request failed: ${describe(err)}`);
    });
  }

  kick() { for (const e of this.subs.values()) e.kick?.(); }

  async _loop(sub, signal, entry) {
    const ladder = this.ladder;
    for (;;) {
      const c = sub.cursor;
      const limit = ladder.options.pollLimit;
      const url = channelUrl(this.base, sub.channel, 'messages', { since: c.offset, epoch: c.epoch, limit, wait: this.waitS });
      const timeout = AbortSignal.any([signal, AbortSignal.timeout(((this.waitS ?? 0) + 10) * 1000)]);
      const body = await httpJson(ladder.fetch, url, { signal: timeout });
      if (signal.aborted) throw abortError();
      if (!sub.active) return;
      if (body.truncated) ladder._truncated(sub.channel, body.truncated.oldest, body.truncated.epoch);
      for (const msg of body.messages || []) ladder._deliver(sub, { channel: sub.channel, ...msg }, body.epoch);
      ladder._subscribed(sub.channel, body.epoch, Number(body.next));
      const full = (body.messages || []).length >= limit;
      if (this.waitS === null && !full) { // a full page means more is waiting: ask again at once
        await new Promise((resolve, reject) => {
          const t = setTimeout(resolve, ladder.options.pollIntervalMs);
          entry.kick = () => { clearTimeout(t); resolve(); };
          signal.addEventListener('abort', () => { clearTimeout(t); reject(abortError()); }, { once: true });
        });
      }
    }
  }
}

class LongPollTransport extends PollTransport {
  get name() { return 'longpoll'; }
  get waitS() { return this.ladder.options.longPollWaitS; }
}

const TRANSPORTS = {
  webtransport: WebTransportTransport,
  websocket: WebSocketTransport,
  sse: SseTransport,
  longpoll: LongPollTransport,
  poll: PollTransport,
};

export { sleep };
