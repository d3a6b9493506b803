// tab-joins.js: presence members a connection joins one by one, besides
// its subscriptions' (`presence_join`, docs/protocol.md): shared mode's
// host joins each tab this way when presence is counted per tab. They are
// joined on every new socket connection until left, and each is told by a
// `presence_error` event `{ channel, tab, error }` when the server refuses
// it. An event stream or a poll joins them by naming them in its query
// (`tab`, ./subscription.js): a change re-opens the stream from its cursor
// or goes with the next poll (the rung's presenceJoin / presenceLeave).

export class TabJoins {
  constructor(ladder) {
    this.ladder = ladder;
    /** `channel\ntab` -> { channel, tab, client, info } */
    this.joins = new Map();
  }

  join(channel, tab, { client, info } = {}) {
    const j = { channel, tab, client, info };
    this.joins.set(`${channel}\n${tab}`, j);
    this._send(this.ladder._transport, j);
  }

  leave(channel, tab) {
    if (!this.joins.delete(`${channel}\n${tab}`)) return;
    this.ladder._transport?.presenceLeave?.(channel, tab).catch(() => { /* gone with the connection anyway */ });
  }

  /** The joins of `channel`, in join order. */
  of(channel) { return [...this.joins.values()].filter((j) => j.channel === channel); }

  /** Joins every tab again on a new connection `tr`. */
  rejoin(tr) { for (const j of this.joins.values()) this._send(tr, j); }

  _send(tr, j) {
    if (!tr) return;
    const refused = (error) => {
      if (this.joins.get(`${j.channel}\n${j.tab}`) === j) this.ladder.emit('presence_error', { channel: j.channel, tab: j.tab, error });
    };
    if (!tr.presenceJoin) return;
    tr.presenceJoin(j).catch((e) => {
      // A lost connection is no refusal: the next one joins again.
      if (e.code) refused({ code: e.code, message: e.message });
    });
  }
}
