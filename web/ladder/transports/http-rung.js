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
  unsubscribe(channel) { this.subs.get(channel)?.stop(); this.subs.delete(channel); }
  close() {
    this.closed = true;
    for (const s of this.subs.values()) s.stop();
    this.subs.clear();
  }
}
