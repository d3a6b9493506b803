// poll.js: the long-polling and short-polling rungs — the same GET of
// /api/channels/{channel}/messages from the cursor, with or without `wait`.

import { abortError, describe } from '../util.js';
import { channelUrl, httpJson, parseConnection } from '../http.js';
import { HttpRung, PROBE_CHANNEL } from './http-rung.js';

/** Long polling and short polling: the same GET, with or without `wait`. */
export class PollTransport extends HttpRung {
  get name() { return 'poll'; }
  get waitS() { return null; }

  async open() {
    // Ready = one real request of this kind succeeds.
    await httpJson(this.ladder.fetch, channelUrl(this.base, PROBE_CHANNEL, 'messages', { wait: this.waitS === null ? null : 0 }));
  }

  subscribe(sub) {
    const ctrl = new AbortController();
    const entry = { stop: () => ctrl.abort(), kick: null, again: null, tabs: '[]', sub };
    this.subs.set(sub.channel, entry);
    this._loop(sub, ctrl.signal, entry).catch((err) => {
      if (err.name !== 'AbortError' && this.subs.get(sub.channel) === entry) this._lost(`${this.name} request failed: ${describe(err)}`);
    });
  }

  kick() { for (const e of this.subs.values()) e.kick?.(); }

  /**
   * Each poll names the tabs joined then. When they differ from the ones
   * the last poll named, the poll in flight is given up (a long poll would
   * hold the old list for its whole wait) and asked again from the cursor
   * (its answer was never taken, so nothing is lost or repeated), or a
   * short poll's pause ends at once. A new connection's rejoin, which
   * changes no list, does nothing.
   */
  _tabsChanged(channel) {
    const e = this.subs.get(channel);
    if (!e || JSON.stringify(this._presenceQuery(e.sub, true).tab ?? []) === e.tabs) return;
    e.again?.();
    e.kick?.();
  }

  async _loop(sub, signal, entry) {
    const ladder = this.ladder;
    const connections = new ConnectionWatch();
    for (;;) {
      const c = sub.cursor;
      const limit = ladder.options.pollLimit;
      const presence = this._presenceQuery(sub, true);
      entry.tabs = JSON.stringify(presence.tab ?? []);
      const url = channelUrl(this.base, sub.channel, 'messages', { since: c.offset, epoch: c.epoch, limit, wait: this.waitS, ...presence });
      const again = new AbortController();
      entry.again = () => again.abort();
      const timeout = AbortSignal.any([signal, again.signal, AbortSignal.timeout(((this.waitS ?? 0) + 10) * 1000)]);
      let replaced = false;
      let body;
      try {
        body = await httpJson(ladder.fetch, url, { signal: timeout }, (res) => {
          replaced = connections.answered(res.headers.get('ladder-connection'));
        });
      } catch (err) {
        if (again.signal.aborted && !signal.aborted) continue; // the tabs changed: ask again with them
        throw err;
      } finally {
        entry.again = null;
      }
      if (signal.aborted) throw abortError();
      if (replaced) ladder._connectionReplaced(this);
      if (!sub.active) return;
      if (body.truncated) ladder._truncated(sub.channel, body.truncated.oldest, body.truncated.epoch);
      for (const msg of body.messages || []) ladder._deliver(sub, { channel: sub.channel, ...msg }, body.epoch);
      if (body.presence_error && !sub.presenceError) sub._presenceRefused(body.presence_error);
      const p = body.presence;
      if (p?.members) sub._presenceList(p.members, p.version);
      else if (p?.changes) {
        for (const ch of p.changes) sub._presenceChange(ch.type, ch.member);
        sub._presenceVersion = p.version;
      }
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

export class LongPollTransport extends PollTransport {
  get name() { return 'longpoll'; }
  /**
   * A held request is an idle connection to a NAT or proxy on the way, so
   * it ends within the server's heartbeat (`heartbeat_ms`): the flow is
   * never idle longer than on the other rungs.
   */
  get waitS() {
    const wait = this.ladder.options.longPollWaitS;
    const h = this.ladder.heartbeatMs();
    return h ? Math.max(1, Math.min(wait, Math.floor(h / 1000))) : wait;
  }
}

/**
 * What a poll loop knows of the connections its answers came on, to tell
 * when its connection was replaced: an answer on a connection the server
 * accepted after the loop's previous answer from that server (or from a
 * server it has not heard from before, behind a load balancer). The
 * browser opens such a connection by itself when the one it had is gone
 * (cut by the network, reset by a NAT, closed by a proxy or the server),
 * and resends a GET that was cut on it, so no request fails: these
 * answers are the only sign. Connections the browser's pool shuffles
 * between, all older than the previous answer, are not counted.
 */
export class ConnectionWatch {
  constructor() {
    /** Server → how many connections it had accepted at this loop's last answer from it. */
    this.accepted = new Map();
  }

  /** Takes an answer's `Ladder-Connection` value; true when it came on a replaced connection. */
  answered(header) {
    const c = parseConnection(header);
    if (!c) return false;
    const first = this.accepted.size === 0;
    const before = this.accepted.get(c.server);
    this.accepted.set(c.server, c.accepted);
    return !first && (before === undefined || c.number > before);
  }
}
