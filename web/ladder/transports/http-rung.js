// http-rung.js: the base of the three plain-HTTP rungs (SSE, long polling,
// short polling): one request loop or stream per subscription, publishes
// by POST (they have no `publish` op), and the probe channel their `open()`
// tries to show the rung works on this network.

/** The channel a rung's `open()` requests to prove it works end to end. */
export const PROBE_CHANNEL = 'ladder.probe';

/** Base of the three plain-HTTP rungs: publishes by POST, no `publish` op. */
export class HttpRung {
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
  /**
   * The tabs joined on a channel changed (./tab-joins.js): its stream or
   * poll must name the new list. Joins and leaves are never refused here;
   * a full channel is told by the stream or poll itself.
   */
  presenceJoin({ channel }) { this._tabsChanged(channel); return Promise.resolve({}); }
  presenceLeave(channel) { this._tabsChanged(channel); return Promise.resolve({}); }
  /** The presence query of `sub` on this rung. */
  _presenceQuery(sub, poll) { return sub.presenceQuery(poll, this.ladder._tabJoins?.of(sub.channel) ?? []); }
  _tabsChanged() { /* each rung says how */ }
  unsubscribe(channel) { this.subs.get(channel)?.stop(); this.subs.delete(channel); }
  close() {
    this.closed = true;
    for (const s of this.subs.values()) s.stop();
    this.subs.clear();
  }
}
