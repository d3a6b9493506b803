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
// Heartbeats: the server says its heartbeat period in /api/info
// (`heartbeat_ms`). WebSocket and WebTransport send a liveness echo at
// least that often and give up on the first unanswered one; SSE streams
// carry visible heartbeats and are given up after `missedHeartbeats`
// silent periods; long polls end within one period. A rung given up for
// silence (a proxy holding the stream back; a WebSocket whose echo a dead
// NAT mapping swallows) is remembered per origin, like a race's winner, and
// left out of races for `silentForgetMs`. (A WebTransport session whose
// echo goes unanswered is dropped but not remembered: over UDP a server
// that died looks the same.)
//
// Reconnects (`stats.reconnects`): a rung that fails is given up and the
// client reconnects. A polling rung holds no connection of its own and
// rarely fails: when the browser's connection is cut it resends the GET on
// a new one by itself. So a polling rung's reconnect is a poll answered on
// a connection the server accepted after the rung's previous answer (the
// `Ladder-Connection` header): its connection was replaced underneath
// (`stats.replaced` counts those alone).
//
// /api/info is fetched on every (re)connect, so a rotated development
// certificate (WebTransport `serverCertificateHashes`) is picked up without
// reloading the page.
//
// Plain ES modules, no dependencies, no build step. This file is the entry
// point and the connection's life (connect, reconnect with backoff, adopt a
// winner, re-probe, route deliveries to subscriptions); the parts live in
// ./ladder/:
//
//   race.js          the fallback race (injected clock, no I/O)
//   cursor.js        the one resume cursor: dedupe, gaps, truncation
//   subscription.js  a subscription: its cursor, stats, pause, delivery
//   util.js          clock, backoff, errors, emitter
//   http.js          channel URLs, JSON requests, publish by POST
//   tab-joins.js     presence members joined one by one (tabs)
//   transports/      one module per rung, index.js = order + availability
//   shared/          shared mode, `new Ladder({ shared: true })`: one
//                    connection for all tabs (SharedWorker, or a leader tab
//                    elected with Web Locks relaying over BroadcastChannel)

import { RUNGS, TRANSPORTS, offeredRungs, unavailableReason } from './ladder/transports/index.js';
import { Race, raceOrder } from './ladder/race.js';
import { Subscription } from './ladder/subscription.js';
import { Emitter, backoffDelay, describe, mayRetry, newIdempotencyKey, realClock, withTimeout } from './ladder/util.js';
import { httpJson, httpPublish } from './ladder/http.js';
import { SharedLadder, sharedPath } from './ladder/shared/tab.js';
import { TabJoins } from './ladder/tab-joins.js';

export { RUNGS, Subscription, backoffDelay, httpPublish };
export { hexToBytes, sleep } from './ladder/util.js';

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
  // Where the WebSocket and WebTransport rungs connect, when not where
  // /api/info says (`base` + /api/ws, `webtransport.url`): e.g. through a
  // relay, while /api/info and the HTTP rungs stay on `base`.
  wsUrl: null,
  wtUrl: null,
  publishTimeoutMs: 10000,
  // Retries of a publish that may not have arrived (same idempotency key).
  publishRetries: 3,
  // WebTransport liveness: QUIC over UDP gets no reset when the server dies,
  // so a silent session would only end at the QUIC idle timeout. An echo on
  // the control stream every livenessMs that is not answered within
  // livenessTimeoutMs ends the session at once and the client reconnects.
  livenessMs: 5000,
  livenessTimeoutMs: 3000,
  // An SSE stream with no event for this many of the server's heartbeat
  // periods is given up (and remembered as silent on this origin).
  missedHeartbeats: 3,
  silentForgetMs: 10 * 60 * 1000,
  // The clock of the race, the backoff waits and the re-probe: tests inject
  // a manual one (`now`, `setTimeout`, `clearTimeout`).
  clock: realClock,
};

/** The client. Events: state, open, report, reconnect, replaced, upgrade, truncated, gap, lagged, error. */
export class Ladder extends Emitter {
  constructor(options = {}) {
    super();
    // Shared mode: one connection for every tab of the origin
    // (./ladder/shared/); the same API, so the application is unchanged.
    // Where neither SharedWorker nor Web Locks exist, this tab connects alone.
    if (options.shared && sharedPath(options.env || globalThis, options.sharedPath || null)) {
      return new SharedLadder(options, Ladder);
    }
    this.options = { ...DEFAULTS, ...options };
    if (this.options.force) this.options.transports = [this.options.force];
    this.fetch = this.options.fetch || globalThis.fetch.bind(globalThis);
    this.clock = this.options.clock;
    /** idle | connecting | open | reconnecting | closed | unavailable */
    this.state = 'idle';
    this.transport = null;
    this.info = null;
    this.report = null;
    this.stats = { connects: 0, reconnects: 0, replaced: 0, drops: 0, upgrades: 0, silent: 0 };
    this.lastDrop = null;
    this._subs = new Map();
    this._tabJoins = new TabJoins(this);
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
    const t = this.clock.setTimeout(() => { this._timers.delete(t); fn(); }, ms);
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

  get silentKey() { return `ladder.silent:${new URL(this.options.base).origin}`; }

  /** Rungs given up for silence on this origin and not yet forgotten: name → { until, reason }. */
  _silentRungs() {
    if (!this.options.remember || this.options.force) return {};
    let all = {};
    try { all = JSON.parse(globalThis.localStorage.getItem(this.silentKey)) || {}; } catch { return {}; }
    const now = Date.now();
    return Object.fromEntries(Object.entries(all).filter(([, v]) => v?.until > now));
  }

  /**
   * Called by a rung that is connected but silent: remember that on this
   * origin, then drop it; the reconnect races the other rungs.
   */
  _giveUpSilent(tr, reason) {
    this.stats.silent++;
    if (this.options.remember && !this.options.force) {
      const all = { ...this._silentRungs(), [tr.name]: { until: Date.now() + this.options.silentForgetMs, reason } };
      try { globalThis.localStorage.setItem(this.silentKey, JSON.stringify(all)); } catch { /* private mode */ }
    }
    this.emit('silent', { transport: tr.name, reason });
    tr._lost(`given up: ${reason}`);
  }

  /** The server's heartbeat period (`heartbeat_ms` in /api/info), or null when it sends none. */
  heartbeatMs() {
    const h = Number(this.info?.heartbeat_ms);
    return Number.isFinite(h) && h > 0 ? h : null;
  }

  /** How often the duplex rungs echo: `livenessMs`, or the server's heartbeat when shorter. */
  livenessEveryMs() {
    const l = this.options.livenessMs;
    const h = this.heartbeatMs();
    return l > 0 && h ? Math.min(l, h) : l;
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
    if (this.lastDrop && !this.lastDrop.resumedAt) this.lastDrop.resumedAt = this.clock.now();
    this._remember(tr.name);
    for (const sub of this._subs.values()) tr.subscribe(sub);
    // Before the old connection goes, so a switch shows no leave.
    this._tabJoins.rejoin(tr);
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
   * Races the offered rungs (./ladder/race.js). Resolves with the first
   * transport that is ready, plus a report naming every rung and why it lost.
   */
  async _race(info) {
    const o = this.options;
    const losers = {};
    let offered = [];
    for (const name of o.transports) {
      const why = unavailableReason(name, info, o.impls);
      if (why) losers[name] = why; else offered.push(name);
    }
    // Rungs that went silent here sit out, unless nothing else is left.
    const silent = this._silentRungs();
    const audible = offered.filter((n) => !silent[n]);
    if (audible.length > 0 && audible.length < offered.length) {
      for (const n of offered.filter((x) => silent[x])) {
        losers[n] = `went silent on this network (${silent[n].reason}); skipped until ${new Date(silent[n].until).toLocaleTimeString()}`;
      }
      offered = audible;
    }
    if (offered.length === 0) {
      const e = new Error(o.force ? `${o.force}: ${losers[o.force]}` : 'no rung is available');
      e.unavailable = true;
      this._reportFailure({ winner: null, reason: e.message, losers, startedAt: Date.now(), elapsedMs: null });
      throw e;
    }
    const remembered = this._remembered();
    const race = new Race({
      order: raceOrder(offered, remembered),
      make: (name) => this._makeTransport(name),
      clock: this.clock,
      raceDelayMs: o.raceDelayMs,
      staggerMs: o.staggerMs,
      probeTimeoutMs: o.probeTimeoutMs,
      remembered,
      losers,
    });
    try {
      return await race.run();
    } catch (err) {
      this._reportFailure(race.report);
      throw err;
    }
  }

  _reportFailure(report) {
    this.report = report;
    this.emit('report', report);
  }

  /**
   * After settling below the best offered rung, try the better ones again
   * later; if one opens, switch to it (the cursors make the switch lossless).
   */
  _scheduleReprobe(offered, current) {
    if (this.options.force || !this.options.reprobeMs) return;
    const silent = this._silentRungs();
    const better = offered.slice(0, offered.indexOf(current)).filter((n) => !silent[n]);
    if (better.length === 0) return;
    this._later(this.options.reprobeMs, async () => {
      if (this._closed || this.transport !== current || this.state !== 'open') return;
      for (const name of better) {
        const tr = this._makeTransport(name);
        try {
          await withTimeout(tr.open(), this.options.probeTimeoutMs, `${name} not ready`, this.clock);
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

  /**
   * Called by a polling rung whose poll was answered on a new connection
   * (./ladder/transports/poll.js): no request failed, but the connection
   * was replaced underneath, which is a polling rung's reconnect.
   */
  _connectionReplaced(tr) {
    if (tr !== this._transport || this._closed) return;
    this.stats.reconnects++;
    this.stats.replaced++;
    this.emit('replaced', { transport: tr.name });
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
    this.lastDrop = { at: this.clock.now(), resumedAt: null, transport: tr.name };
    tr.close();
    this._transportClosed(tr, 'dropped by the application');
    return true;
  }

  /**
   * Subscribes to a channel. `opts`: since, epoch, delivery ('datagram' on
   * WebTransport), onTruncated, and presence `{ client, info, events }` with
   * onPresence(members, change) (see ./ladder/subscription.js).
   */
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

  /**
   * Joins `channel`'s presence as tab `tab` of `client` (the token's sub
   * with auth) on this connection and every later one, until
   * leavePresence(): several members of one identity on one connection
   * (shared mode counting tabs; ./ladder/tab-joins.js). On WebTransport
   * and WebSocket by `presence_join` (a refusal is a `presence_error`
   * event `{ channel, tab, error }`); on SSE and polls the channel's
   * stream or poll names the tabs (`tab`) and a refusal comes as the
   * subscription's own `presence_error`.
   */
  joinPresence(channel, tab, opts) { this._tabJoins.join(channel, tab, opts); }

  leavePresence(channel, tab) { this._tabJoins.leave(channel, tab); }

  /**
   * Publishes over the current rung when it can carry it, else POST. A
   * publish that fails in a way that may or may not have reached the hub
   * (timed out, connection lost, 503) is retried up to `publishRetries`
   * times with backoff — every attempt with the same idempotency key, so
   * the server appends it once however many attempts reached it. A refusal
   * (bad request, forbidden, too large, rate limited) is not retried.
   * `opts.idempotencyKey` sets the key; by default a random one is made.
   */
  async publish(channel, data, opts = {}) {
    const key = opts.idempotencyKey ?? newIdempotencyKey();
    for (let attempt = 0; ; attempt++) {
      try {
        const tr = this._transport;
        if (tr && tr.publish) return await tr.publish(channel, data, key);
        return await httpPublish(this.options.base, channel, data, this.fetch, key);
      } catch (e) {
        if (this._closed || attempt >= this.options.publishRetries || !mayRetry(e)) throw e;
        const delay = backoffDelay(attempt, this.options.backoffBaseMs, this.options.backoffCapMs);
        await new Promise((r) => this._later(delay, r));
      }
    }
  }

  /** Updates the short-poll interval live. */
  setPollInterval(ms) { this.options.pollIntervalMs = Math.max(10, Number(ms) || 1000); this._transport?.kick?.(); }

  close() {
    this._closed = true;
    for (const t of this._timers) this.clock.clearTimeout(t);
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

  _subscribed(channel, epoch, head) { this._sub(channel)?._subscribed(epoch, head); }

  _truncated(channel, oldest, epoch) { this._sub(channel)?._truncated(oldest, epoch); }

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

  /** Every message from every rung goes through here (the subscription's cursor orders and dedupes). */
  _deliver(sub, msg, epoch, via = null) { sub?._deliver(msg, epoch, via); }

  _message(msg, epoch, via = null) { this._deliver(this._sub(msg.channel), msg, epoch, via); }
}

