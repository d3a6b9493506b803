// host.js: the one connection of shared mode. A SharedHost runs one real
// (unshared) Ladder and serves every tab of the origin through "links":
// a link is anything with `send(msg)` whose incoming messages are handed to
// `receive(tabId, msg)`. It lives in the SharedWorker, or in the leader tab
// (./leader.js). No DOM, no timers of its own: Node tests drive it.
//
// Per channel the host holds ONE subscription and relays its messages to
// every tab subscribed to it; each tab keeps its own cursor and drops what
// it has already seen. When a tab asks for a channel from further back than
// the host's subscription has delivered (a tab that was behind, or every
// tab resuming on a new leader), the host resubscribes from the lowest
// position asked: every tab then sees the repeats, and its cursor drops
// them, so nothing is lost or doubled.
//
// Presence (`sharedPresence` in tab.js): counted per user, the channel's
// one subscription joins with the first tab's `client`, so the tabs are one
// member. Counted per tab, the subscription joins nobody (`join: false`)
// and each tab with a `client` joins as its own member, named by its tab
// id (Ladder.joinPresence), and leaves when it unsubscribes or goes; a new
// connection (a new leader) joins the remaining tabs again. On SSE and
// polls the stream or poll names the joined tabs (`tab`), so each is a
// member there too (./tab-joins.js).
//
// A tab that dies says no goodbye, and neither a worker's port nor a
// BroadcastChannel tells when the other side is gone. So each tab holds a
// Web Lock named for it (`life` in its hello) while it lives; the host
// asks for that lock and is granted it once the tab is gone, and lets the
// tab go: its subscriptions, its presence member.

import { memberList } from '../subscription.js';

/** Messages between tab and host (`t` is the kind). */
export const KINDS = ['hello', 'sub', 'unsub', 'pub', 'bye', 'state', 'subscribed', 'msg', 'truncated', 'pubres', 'presence', 'presence_error'];

export class SharedHost {
  /**
   * `makeLadder(options)` builds the real client from the first tab's
   * options; `locks` (navigator.locks, where there is one) watches the
   * tabs' life locks.
   */
  constructor(makeLadder, { locks = null } = {}) {
    this.makeLadder = makeLadder;
    this.locks = locks;
    /** Tabs whose life lock is asked for; the asking ends with the host. */
    this.watched = new Set();
    this._stopWatching = new AbortController();
    this.ladder = null;
    /** tabId -> { send, channels: Set } */
    this.tabs = new Map();
    /** channel -> { sub, tabs: Set, since, epoch } */
    this.channels = new Map();
  }

  /** Registers a tab reachable through `send`. */
  attach(tabId, send) {
    const known = this.tabs.get(tabId);
    if (known) { known.send = send; return; }
    this.tabs.set(tabId, { send, channels: new Set() });
  }

  /** One message from a tab. */
  receive(tabId, msg) {
    const tab = this.tabs.get(tabId);
    if (!tab) return;
    switch (msg.t) {
      case 'hello': this._hello(tab, msg); this._watch(tabId, msg.life); break;
      case 'sub': this._sub(tabId, tab, msg); break;
      case 'unsub': this._unsub(tabId, tab, msg.channel); break;
      case 'pub': this._pub(tab, msg); break;
      case 'bye': this.detach(tabId); break;
      default: break;
    }
  }

  /** Forgets a tab that closed: its channels are let go when no tab is left on them. */
  detach(tabId) {
    const tab = this.tabs.get(tabId);
    if (!tab) return;
    for (const ch of [...tab.channels]) this._unsub(tabId, tab, ch);
    this.tabs.delete(tabId);
  }

  /** Lets the tab go once the browser grants its life lock: the tab is gone. */
  _watch(tabId, life) {
    if (!life || !this.locks || this.watched.has(tabId)) return;
    this.watched.add(tabId);
    this.locks.request(life, { mode: 'exclusive', signal: this._stopWatching.signal }, () => {
      this.watched.delete(tabId);
      this.detach(tabId);
    }).catch(() => this.watched.delete(tabId));
  }

  /** Closes the connection (the host's tab or worker is going away). */
  close() {
    this._stopWatching.abort();
    this.ladder?.close();
    this.ladder = null;
  }

  _hello(tab, msg) {
    if (!this.ladder) {
      this.ladder = this.makeLadder(msg.options || {});
      this.ladder.on('state', (d) => this._all({ t: 'state', state: d.state, transport: this.ladder.transport }));
      // A tab's own join refused (or impossible on this rung): told to that tab.
      this.ladder.on('presence_error', ({ channel, tab, error }) => {
        const ch = this.channels.get(channel);
        if (!ch) return;
        if (!tab) this._each(ch, { t: 'presence_error', channel, error });
        else if (ch.tabs.has(tab)) this.tabs.get(tab)?.send({ t: 'presence_error', channel, error });
      });
      this.ladder.connect().catch(() => {});
    }
    tab.send({ t: 'state', state: this.ladder.state, transport: this.ladder.transport });
  }

  _sub(tabId, tab, { channel, since, epoch, presence, perTab }) {
    tab.channels.add(channel);
    let ch = this.channels.get(channel);
    const from = since === null || since === undefined ? null : Number(since);
    if (!ch) {
      // Per user, the first tab's presence identity is the group's: one
      // subscription per channel, so the tabs are one member. Per tab (the
      // first tab's choice), the subscription joins nobody itself: each
      // tab joins (on a socket by `presence_join`, on an event stream or a
      // poll by the `tab` list it sends).
      const own = perTab ? { ...(presence || {}), events: Boolean(presence?.events), tabs: true } : presence || null;
      ch = { sub: null, tabs: new Set(), joined: new Set(), since: from, epoch: epoch ?? null, presence: own };
      this.channels.set(channel, ch);
      this._open(channel, ch, from, epoch);
    } else if (from !== null && (ch.sub.cursor.offset === null || from < ch.sub.cursor.offset
      || (epoch && ch.sub.cursor.epoch && epoch !== ch.sub.cursor.epoch))) {
      // Further back than delivered so far: start again from there.
      ch.sub.unsubscribe();
      this._open(channel, ch, from, epoch);
    }
    if (presence?.events && !ch.presence?.events) {
      // A tab wants the member list the subscription was not asking for.
      ch.presence = ch.presence?.tabs ? { ...ch.presence, events: true } : { ...(ch.presence || {}), ...presence, events: true };
      ch.sub.unsubscribe();
      this._open(channel, ch, ch.sub.cursor.offset, ch.sub.cursor.epoch);
    } else if (ch.presence?.events && ch.sub.members.size) {
      tab.send({ t: 'presence', channel, members: memberList(ch.sub.members) });
    }
    ch.tabs.add(tabId);
    if (ch.presence?.tabs && presence?.client) {
      ch.joined.add(tabId);
      this.ladder.joinPresence(channel, tabId, { client: presence.client, info: presence.info });
    }
    ch.sub.ready.then(({ epoch: e, head }) => {
      if (!ch.tabs.has(tabId)) return;
      tab.send({ t: 'subscribed', channel, epoch: e ?? ch.sub.cursor.epoch, head: head ?? ch.sub.cursor.offset });
    });
  }

  _open(channel, ch, since, epoch) {
    const opts = { onTruncated: (d) => this._each(ch, { t: 'truncated', channel, oldest: d.oldest, epoch: d.epoch }) };
    if (since !== null) opts.since = since;
    if (epoch) opts.epoch = epoch;
    if (ch.presence) {
      opts.presence = ch.presence;
      opts.onPresence = (members) => this._each(ch, { t: 'presence', channel, members });
    }
    const sub = this.ladder.subscribe(channel, opts, (msg) => {
      if (ch.sub === sub) this._each(ch, { t: 'msg', channel, msg, epoch: sub.cursor.epoch });
    });
    ch.sub = sub;
  }

  _unsub(tabId, tab, channel) {
    tab.channels.delete(channel);
    const ch = this.channels.get(channel);
    if (!ch) return;
    ch.tabs.delete(tabId);
    if (ch.joined.delete(tabId)) this.ladder?.leavePresence(channel, tabId);
    if (ch.tabs.size === 0) {
      ch.sub.unsubscribe();
      this.channels.delete(channel);
    }
  }

  async _pub(tab, { id, channel, data, key }) {
    try {
      // The tab's key: a resend to a new leader is the same publish.
      const value = await this.ladder.publish(channel, data, key ? { idempotencyKey: key } : {});
      tab.send({ t: 'pubres', id, ok: true, value });
    } catch (err) {
      tab.send({ t: 'pubres', id, ok: false, error: String(err?.message || err) });
    }
  }

  _each(ch, msg) {
    for (const id of ch.tabs) this.tabs.get(id)?.send(msg);
  }

  _all(msg) {
    for (const tab of this.tabs.values()) tab.send(msg);
  }
}
