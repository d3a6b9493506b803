// sse.js: the SSE rung — one EventSource per channel, resumed from the
// subscription's cursor (`since`, `epoch`); the client, not EventSource,
// decides when to reconnect.
//
// Streams ask for visible heartbeats (`heartbeat=event`): EventSource never
// shows comments, so the server's `: ping` alone cannot prove a stream
// flows. With them, the rung is ready only once the first heartbeat has
// arrived (a buffering proxy passes the response head and holds the
// events), and a stream silent for `missedHeartbeats` heartbeat periods is
// given up and remembered as silent on this origin.

import { channelUrl } from '../http.js';
import { HttpRung, PROBE_CHANNEL } from './http-rung.js';

/** SSE: one EventSource per channel; the library, not EventSource, retries. */
export class SseTransport extends HttpRung {
  get name() { return 'sse'; }

  open() {
    // Ready = a heartbeat arrives through this network, not merely a head.
    return new Promise((resolve, reject) => {
      const es = new EventSource(channelUrl(this.base, PROBE_CHANNEL, 'events', { heartbeat: 'event' }));
      this._probe = es;
      es.addEventListener('heartbeat', () => { es.close(); resolve(); }, { once: true });
      es.onerror = () => { es.close(); reject(new Error('event stream refused')); };
    });
  }

  /** How long a stream may stay silent, or null when the server sends no heartbeats. */
  _silenceLimitMs() {
    const h = this.ladder.heartbeatMs();
    return h ? Math.round((this.ladder.options.missedHeartbeats + 0.5) * h) : null;
  }

  subscribe(sub) {
    const c = sub.cursor;
    const presence = this._presenceQuery(sub, false);
    const es = new EventSource(channelUrl(this.base, sub.channel, 'events', { since: c.offset, epoch: c.epoch, heartbeat: 'event', ...presence }));
    const limit = this._silenceLimitMs();
    let watchdog = null;
    const entry = { stop: () => { clearTimeout(watchdog); es.close(); }, sub, tabs: JSON.stringify(presence.tab ?? []) };
    this.subs.set(sub.channel, entry);
    const alive = () => {
      if (!limit) return;
      clearTimeout(watchdog);
      watchdog = setTimeout(() => {
        if (this.subs.get(sub.channel) !== entry) return;
        const missed = this.ladder.options.missedHeartbeats;
        this.ladder._giveUpSilent(this, `event stream for ${sub.channel} silent for ${limit} ms (${missed} heartbeats missed)`);
      }, limit);
    };
    alive();
    es.onopen = () => { alive(); this.ladder._subscribed(sub.channel, null, NaN); };
    es.addEventListener('heartbeat', alive);
    es.addEventListener('message', (ev) => {
      alive();
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      const epoch = typeof ev.lastEventId === 'string' && ev.lastEventId.includes(':')
        ? ev.lastEventId.slice(0, ev.lastEventId.lastIndexOf(':')) : null;
      this.ladder._deliver(this.ladder._sub(sub.channel), { channel: sub.channel, ...msg }, epoch);
    });
    // Presence events carry no id, so the resume position stays the last message's.
    const json = (ev) => { try { return JSON.parse(ev.data); } catch { return null; } };
    es.addEventListener('presence', (ev) => sub._presenceList(json(ev)?.members));
    es.addEventListener('join', (ev) => sub._presenceChange('join', json(ev)));
    es.addEventListener('leave', (ev) => sub._presenceChange('leave', json(ev)));
    es.addEventListener('presence_error', (ev) => sub._presenceRefused(json(ev)));
    es.addEventListener('truncated', (ev) => {
      alive();
      let t;
      try { t = JSON.parse(ev.data); } catch { return; }
      this.ladder._truncated(sub.channel, t.oldest, t.epoch);
    });
    es.onerror = () => {
      if (this.subs.get(sub.channel) !== entry) return;
      entry.stop();
      this._lost(`event stream for ${sub.channel} ended`);
    };
  }

  /**
   * Another tab list: the stream is re-opened from the cursor (what it
   * delivered is not delivered again; the cursor drops any repeat), and
   * only when the list it names differs (a new connection rejoins every
   * tab, which changes nothing here).
   */
  _tabsChanged(channel) {
    const entry = this.subs.get(channel);
    if (!entry || this.closed) return;
    if (JSON.stringify(this._presenceQuery(entry.sub, false).tab ?? []) === entry.tabs) return;
    entry.stop();
    this.subscribe(entry.sub);
  }

  close() {
    this._probe?.close();
    super.close();
  }
}
