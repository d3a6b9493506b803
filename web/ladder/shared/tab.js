// tab.js: shared mode as a tab sees it. `new Ladder({ shared: true })`
// returns a SharedLadder: the same API as the unshared client (connect,
// subscribe, publish, close, events, subscriptions with their cursors), but
// the connection is held once per origin, by a SharedWorker where the
// browser has one (./worker.js), else by a leader tab elected with Web
// Locks that relays over BroadcastChannel (./leader.js).
//
// Each subscription keeps its own cursor here, in its tab, so the host may
// repeat messages (after a leader change, or when it resubscribes from
// further back) and the application still sees each one once, in order.

import { Subscription } from '../subscription.js';
import { Emitter, newIdempotencyKey, realClock } from '../util.js';
import { Election } from './leader.js';
import { SharedHost } from './host.js';

/** Options a tab hands to the host's Ladder (plain data only). */
const PASSED = ['base', 'transports', 'force', 'raceDelayMs', 'staggerMs', 'probeTimeoutMs', 'backoffBaseMs',
  'backoffCapMs', 'pollIntervalMs', 'pollLimit', 'longPollWaitS', 'reprobeMs', 'remember', 'wtUrl',
  'publishTimeoutMs', 'livenessMs', 'livenessTimeoutMs'];

function randomId() {
  return globalThis.crypto?.randomUUID?.() || `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

/** Which path shared mode takes here: 'worker', 'leader', or null when neither is possible. */
export function sharedPath(env = globalThis, prefer = null) {
  const worker = typeof env.SharedWorker === 'function';
  const leader = Boolean(env.navigator?.locks) && typeof env.BroadcastChannel === 'function';
  if (prefer === 'leader') return leader ? 'leader' : null;
  if (worker && prefer !== 'leader') return 'worker';
  return leader ? 'leader' : null;
}

export class SharedLadder extends Emitter {
  /**
   * `Ladder` is the unshared client class (passed in, so this module does
   * not import the entry point that imports it). Shared-only options:
   * `sharedPath` ('worker' | 'leader', default: worker where available),
   * `sharedName` (the group; default per origin of `base`),
   * `sharedPresence` ('user', the default: the tabs of the group are one
   * presence member; 'tab': each tab subscribing with a presence `client`
   * is a member of its own, that id with this tab's `tabId` as its `tab`;
   * the group's first tab on a channel decides for it), and for tests
   * `env` (an object with SharedWorker / BroadcastChannel / navigator.locks).
   */
  constructor(options, Ladder) {
    super();
    this.options = options;
    this.Ladder = Ladder;
    this.env = options.env || globalThis;
    this.clock = options.clock || realClock;
    const by = options.sharedPresence ?? 'user';
    if (by !== 'user' && by !== 'tab') throw new Error(`sharedPresence must be 'user' or 'tab', not ${JSON.stringify(by)}`);
    this.presenceBy = by;
    this.tabId = options.tabId || randomId();
    this.path = sharedPath(this.env, options.sharedPath || null);
    const base = options.base || this.env.location?.origin || 'http://127.0.0.1:8080';
    this.group = options.sharedName || `ladder:${new URL(base).origin}`;
    this.hostOptions = { base };
    for (const k of PASSED) if (options[k] !== undefined) this.hostOptions[k] = options[k];
    this.state = 'idle';
    this.transport = null;
    this.stats = { connects: 0, reconnects: 0, drops: 0, upgrades: 0, leaderChanges: 0 };
    this.role = null; // 'worker' | 'leader' | 'follower'
    this._subs = new Map();
    this._pending = new Map();
    this._nextId = 1;
    this._send = null;
    this._closed = false;
    this._transport = null;
  }

  /** Joins the group (worker or election); resolves once the host's connection is open. */
  connect() {
    if (this._opened) return this._opened;
    if (!this.path) return Promise.reject(new Error('shared mode needs SharedWorker, or Web Locks and BroadcastChannel'));
    this._opened = new Promise((resolve) => { this._resolveOpen = resolve; });
    const join = () => { if (this.path === 'worker') this._joinWorker(); else this._joinElection(); };
    const locks = this.env.navigator?.locks;
    if (!locks) join();
    else {
      // This tab's life lock (see ./host.js), held while it lives and
      // named to the host only once held, so the host is granted it only
      // when the tab is gone. Publishes made meanwhile wait in `early`.
      const early = [];
      this._send = (msg) => early.push(msg);
      this._life = `${this.group}:tab:${this.tabId}`;
      locks.request(this._life, { mode: 'exclusive' }, () => {
        if (this._closed) return undefined;
        join();
        // A leader-path resync sends the pending publishes again itself.
        if (this.path === 'worker') for (const msg of early) if (msg.t === 'pub') this._send(msg);
        return new Promise((resolve) => { this._releaseLife = resolve; });
      }).catch(() => {});
    }
    const bye = () => this._send?.({ t: 'bye' });
    this.env.addEventListener?.('pagehide', bye);
    return this._opened;
  }

  _joinWorker() {
    const url = this.options.workerUrl || new URL('./worker.js', import.meta.url);
    const worker = new this.env.SharedWorker(url, { type: 'module', name: this.group });
    const port = worker.port;
    port.onmessage = (e) => this._receive(e.data);
    port.start?.();
    this.role = 'worker';
    this._port = port;
    this._send = (msg) => port.postMessage({ tab: this.tabId, body: msg });
    this._resync();
  }

  _joinElection() {
    this.role = 'follower';
    this.election = new Election({
      env: this.env,
      name: this.group,
      tabId: this.tabId,
      onMessage: (msg) => this._receive(msg),
      // A new leader (maybe this tab): everything is sent to it again,
      // each subscription from its own cursor.
      onLeader: (isMe) => {
        if (this.role !== null && this._everLed !== undefined) this.stats.leaderChanges++;
        this._everLed = true;
        this.role = isMe ? 'leader' : 'follower';
        this._resync();
      },
      makeHost: () => new SharedHost((opts) => new this.Ladder({ ...opts, shared: false }), { locks: this.env.navigator?.locks || null }),
    });
    this._send = (msg) => this.election.send(msg);
    this.election.start();
  }

  /** Tells the host everything this tab needs: options, subscriptions at their cursors. */
  _resync() {
    if (this._closed) return;
    this._send({ t: 'hello', options: this.hostOptions, life: this._life ?? null });
    for (const sub of this._subs.values()) this._send(subOp(sub, this.presenceBy));
    // A publish in flight to a leader that is gone may or may not have
    // reached the server: it is sent again to the new one with the same
    // idempotency key, so the server appends it once either way (and
    // answers a repeat with the first one's offset).
    if (this.role !== 'worker') {
      for (const [id, p] of this._pending) {
        if (p.sentTo === this.election?.leaderId) continue;
        p.sentTo = this.election?.leaderId ?? null;
        p.resent++;
        this._send(pubOp(id, p));
      }
    }
  }

  _receive(msg) {
    switch (msg.t) {
      case 'state': {
        const was = this.state;
        this.state = msg.state;
        this.transport = msg.transport;
        this.emit('state', { state: msg.state, transport: msg.transport, role: this.role });
        if (msg.state === 'open' && was !== 'open') {
          this.stats.connects++;
          this.emit('open', { transport: msg.transport });
          this._resolveOpen?.(msg.transport);
        }
        break;
      }
      case 'subscribed': this._subs.get(msg.channel)?._subscribed(msg.epoch, msg.head); break;
      case 'msg': this._subs.get(msg.channel)?._deliver(msg.msg, msg.epoch); break;
      case 'truncated': this._subs.get(msg.channel)?._truncated(msg.oldest, msg.epoch); break;
      case 'presence': this._subs.get(msg.channel)?._presenceList(msg.members); break;
      case 'presence_error': this._subs.get(msg.channel)?._presenceRefused(msg.error); break;
      case 'pubres': {
        const p = this._pending.get(msg.id);
        if (!p) break;
        this._pending.delete(msg.id);
        if (msg.ok) p.resolve(msg.value); else p.reject(new Error(msg.error));
        break;
      }
      default: break;
    }
  }

  /** Subscribes to a channel; same options and callback as the unshared client. */
  subscribe(channel, opts = {}, onMessage = () => {}) {
    if (typeof opts === 'function') { onMessage = opts; opts = {}; }
    if (this._subs.has(channel)) throw new Error(`already subscribed to ${channel}`);
    const sub = new Subscription(this, channel, opts, onMessage);
    this._subs.set(channel, sub);
    this._send?.(subOp(sub, this.presenceBy));
    return sub;
  }

  _unsubscribe(sub) {
    if (this._subs.get(sub.channel) !== sub) return;
    this._subs.delete(sub.channel);
    this._send?.({ t: 'unsub', channel: sub.channel });
  }

  /**
   * Publishes through the shared connection, with an idempotency key
   * (`opts.idempotencyKey`, else a random one) that every attempt carries:
   * the host's retries, and this tab's resend when the leader changes.
   */
  publish(channel, data, opts = {}) {
    if (!this._send) return Promise.reject(new Error('not connected: call connect() first'));
    const id = `${this.tabId}:${this._nextId++}`;
    const key = opts.idempotencyKey ?? newIdempotencyKey();
    return new Promise((resolve, reject) => {
      const p = { resolve, reject, channel, data, key, sentTo: this.election?.leaderId ?? null, resent: 0 };
      this._pending.set(id, p);
      this._send(pubOp(id, p));
    });
  }

  /** Leaves the group; the connection stays for the other tabs (a leader hands over). */
  close() {
    if (this._closed) return;
    this._send?.({ t: 'bye' });
    this._closed = true;
    this.election?.stop();
    this._releaseLife?.();
    this._port?.close?.();
    this.state = 'closed';
    this.emit('state', { state: 'closed', role: this.role });
  }
}

function pubOp(id, p) {
  return { t: 'pub', id, channel: p.channel, data: p.data, key: p.key };
}

function subOp(sub, presenceBy) {
  return { t: 'sub', channel: sub.channel, since: sub.cursor.offset, epoch: sub.cursor.epoch, presence: sub.presence, perTab: presenceBy === 'tab' };
}
