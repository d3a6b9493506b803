// sse.js: the SSE rung — one EventSource per channel, resumed from the
// subscription's cursor (`since`, `epoch`); the client, not EventSource,
// decides when to reconnect.

import { channelUrl } from '../http.js';
import { HttpRung, PROBE_CHANNEL } from './http-rung.js';

/** SSE: one EventSource per channel; the library, not EventSource, retries. */
export class SseTransport extends HttpRung {
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
    const es = new EventSource(channelUrl(this.base, sub.channel, 'events', { since: c.offset, epoch: c.epoch, ...sub.presenceQuery(false) }));
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
    // Presence events carry no id, so the resume position stays the last message's.
    const json = (ev) => { try { return JSON.parse(ev.data); } catch { return null; } };
    es.addEventListener('presence', (ev) => sub._presenceList(json(ev)?.members));
    es.addEventListener('join', (ev) => sub._presenceChange('join', json(ev)));
    es.addEventListener('leave', (ev) => sub._presenceChange('leave', json(ev)));
    es.addEventListener('presence_error', (ev) => sub._presenceRefused(json(ev)));
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
