// subscription.js: one subscription to one channel. It owns the channel's
// resume cursor (./cursor.js), counts what the client had to repair, holds
// deliveries while paused, and hands each new message to the application.

import { Cursor } from './cursor.js';

/**
 * The key of a member in `sub.members`: its id, or `id tab` for one tab of
 * an identity counted per tab (a space is in no id or tab).
 */
export function memberKey(m) { return m.tab ? `${m.id} ${m.tab}` : m.id; }

/** `sub.members` as the list `[{ id, tab?, info }]`. */
export function memberList(members) {
  return [...members].map(([key, info]) => {
    const sp = key.indexOf(' ');
    return sp < 0 ? { id: key, info } : { id: key.slice(0, sp), tab: key.slice(sp + 1), info };
  });
}

export class Subscription {
  constructor(ladder, channel, opts, onMessage) {
    this.ladder = ladder;
    this.channel = channel;
    this.onMessage = onMessage;
    this.onTruncated = opts.onTruncated || null;
    this.delivery = opts.delivery === 'datagram' ? 'datagram' : 'stream';
    /** The one resume cursor, shared by every rung this subscription lives on. */
    this.cursor = new Cursor({ epoch: opts.epoch ?? null, offset: opts.since, unordered: this.delivery === 'datagram' });
    this.stats = { delivered: 0, duplicatesDropped: 0, gaps: 0, outOfOrder: 0, truncations: 0 };
    this.active = true;
    this.paused = false;
    this._held = [];
    this.ready = new Promise((resolve) => { this._resolveReady = resolve; });
    // Presence (docs/protocol.md): `presence: { client, info, events }`
    // joins as `client` (the token's sub when auth is on) and, with
    // `events`, keeps `members` up to date and calls `onPresence`.
    // `tabs: true` (shared mode counting tabs) subscribes on a socket
    // without joining: its tabs join one by one (Ladder.joinPresence); an
    // event stream or a poll names them in its query instead (`tab`, see
    // presenceQuery). `members` is keyed by memberKey(): the id, or
    // `id tab`.
    this.presence = opts.presence || null;
    this.onPresence = opts.onPresence || null;
    this.members = new Map();
    this.presenceError = null;
    this._presenceVersion = 0;
  }

  /** The presence fields of a `subscribe` op. */
  presenceOp() {
    const p = this.presence;
    if (!p) return {};
    const op = {};
    if (p.tabs) op.join = false;
    else {
      if (p.client) op.client = p.client;
      if (p.info) op.info = p.info;
    }
    if (p.events) op.presence = true;
    return op;
  }

  /**
   * The presence query parameters of an event stream (`poll` false) or a
   * poll. Counting tabs, `joins` are the tabs joined on this channel
   * (TabJoins.of): one member each, as the first one's `client` and
   * `info` (a request carries one identity; tabs of another client wait
   * for a socket rung), and nobody when there are none.
   */
  presenceQuery(poll, joins = []) {
    const p = this.presence;
    if (!p) return {};
    let q = {};
    if (!p.tabs) q = { client: p.client || null, info: p.info ? JSON.stringify(p.info) : null };
    else if (joins.length) {
      const [first] = joins;
      q = {
        client: first.client || null,
        info: first.info ? JSON.stringify(first.info) : null,
        tab: joins.filter((j) => j.client === first.client).map((j) => j.tab),
      };
    }
    if (p.events) q.presence = poll ? String(this._presenceVersion) : '1';
    return q;
  }

  /** The whole member list (first, after a resume, after falling behind). */
  _presenceList(members, version) {
    this.members = new Map((members || []).map((m) => [memberKey(m), m.info]));
    if (version !== undefined) this._presenceVersion = version;
    this._presenceChanged({ type: 'list' });
  }

  /** One join or leave, applied as a set operation. */
  _presenceChange(type, member, version) {
    if (!member) return;
    if (type === 'join') this.members.set(memberKey(member), member.info); else this.members.delete(memberKey(member));
    if (version !== undefined) this._presenceVersion = version;
    this._presenceChanged({ type, member });
  }

  _presenceRefused(error) {
    this.presenceError = error;
    this.ladder.emit('presence_error', { channel: this.channel, error });
  }

  _presenceChanged(change) {
    const members = memberList(this.members);
    try { this.onPresence?.(members, change); } catch (e) { setTimeout(() => { throw e; }); }
    this.ladder.emit('presence', { channel: this.channel, members, change });
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
    const held = this._held;
    this._held = [];
    for (const [msg, epoch, via] of held) this._deliver(msg, epoch, via);
  }

  /** The server confirmed the subscription at (`epoch`, `head`). */
  _subscribed(epoch, head) {
    this.cursor.position(epoch, head);
    this._resolveReady({ epoch, head });
  }

  /** The server's history no longer reaches the cursor; tells the application. */
  _truncated(oldest, epoch) {
    const previous = this.cursor.truncate(oldest, epoch);
    this.stats.truncations++;
    const detail = { channel: this.channel, oldest, epoch, previous };
    this.onTruncated?.(detail);
    this.ladder.emit('truncated', detail);
  }

  /** Every message from every rung comes through here: ordered and deduplicated by the cursor. */
  _deliver(msg, epoch, via = null) {
    if (!this.active) return;
    if (this.paused) { this._held.push([msg, epoch, via]); return; }
    const offset = Number(msg.offset);
    const verdict = this.cursor.admit(offset, epoch);
    if (!verdict.deliver) { this.stats.duplicatesDropped++; return; }
    if (verdict.missing) {
      this.stats.gaps += verdict.missing;
      this.ladder.emit('gap', { channel: this.channel, after: offset - verdict.missing - 1, missing: verdict.missing });
    }
    if (verdict.outOfOrder) this.stats.outOfOrder++;
    this.stats.delivered++;
    if (via === 'datagram') this.stats.datagrams = (this.stats.datagrams || 0) + 1;
    this._resolveReady({ epoch: this.cursor.epoch, head: null });
    const clean = { channel: msg.channel, offset, data: msg.data, ts: msg.ts };
    try { this.onMessage(clean, this); } catch (e) { setTimeout(() => { throw e; }); }
  }
}
