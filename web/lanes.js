// lanes.js: the page's "independent streams" card. Four channels, published
// on a schedule, each read on a lane of its own:
//
// - always, on one WebTransport session, a stream per channel (a lane can be
//   stalled on purpose: the page stops reading it, the others go on);
// - when the network lab offers lossy-link (real kernel packet loss and a
//   delay on the path from its relays to the server, ladder_lab::wire),
//   also on one WebSocket carrying all four, both connections through
//   lossy-link's relays wherever the page itself came from, so the stall
//   one lost TCP segment puts on every lane shows next to the stall a lost
//   QUIC packet puts on one. Publishing goes straight to the server, as in
//   the bench. Each lane draws its latency trace and each connection
//   counts its stalls and co-stalls (./stalls.js, the bench's
//   definitions).
//
// Without the lab the card is the WebTransport demo it always was. Where
// the lab cannot drop packets it says why the comparison is not offered:
// it never compares over a link that is silently clean.

import { Ladder } from './ladder.js';
import { fmtMs, percentile } from './figures.js';
import { drawSpark } from './spark.js';
import { stallOf, summarise, STALL_INTERVALS } from './stalls.js';

export const LANES = ['a', 'b', 'c', 'd'];
/** Latencies drawn per lane (the newest). */
const TRACE = 300;
/** Stalls kept per connection for the co-stall counter (oldest dropped first). */
const MAX_STALLS = 2000;
/** Publishes in flight at most; the schedule waits for one to settle beyond it. */
const MAX_IN_FLIGHT = 64;
/** How long the lanes may take to catch up once publishing ends. */
const DRAIN_MS = 15000;

/** The plain demo (as before the lab): 20 messages/s per lane for two minutes, 1 KiB each. */
const ALONE = { rate: 20, count: 2400, pad: 1024 };
/** The comparison: the bench's rate (R = 50/s, 64-byte payload) for 30 s. */
const COMPARE = { rate: 50, count: 1500, pad: 64 };

const GROUPS = {
  webtransport: { title: 'One WebTransport session, a stream per lane', lane: 'Stream' },
  websocket: { title: 'One WebSocket, all four lanes on one TCP connection', lane: 'Channel' },
};

/**
 * What the card can show: `compare` with the `route` (Ladder options) to
 * lossy-link's relays, and otherwise a `note` saying why not.
 */
export function lanesMode(info) {
  const lab = info.lab;
  const lossy = lab?.conditions.find((c) => c.name === 'lossy-link');
  if (lossy) {
    // The WebSocket and WebTransport handshakes need no CORS, so the
    // relays' URLs work from any page; /api/info stays on the page's own
    // origin (the relay's is another one, and the server sends no CORS
    // headers).
    const ws = new URL('/api/ws', lossy.http);
    ws.protocol = ws.protocol === 'https:' ? 'wss:' : 'ws:';
    return { compare: true, note: '', description: lossy.description, route: { wsUrl: ws.toString(), wtUrl: lossy.webtransport } };
  }
  if (!lab) return { compare: false, note: '' };
  const why = lab.unavailable.find((u) => u.name === 'lossy-link');
  return { compare: false, note: `No comparison with a WebSocket under packet loss here: ${why ? why.reason : 'the lab offers no lossy-link'}.` };
}

export class LanesDemo {
  /**
   * `card` holds #multi-start, #multi-stop, #multi-status, #multi-note and
   * #multi-lanes; `state` is window.ladderState.multi, kept as plain data;
   * `publish(channel, data)` is the page's publisher; `ladderOptions`
   * route the clients through the page's network, and in comparison
   * `mode.route` through lossy-link instead.
   */
  constructor({ card, state, mode, publish, ladderOptions, offersWebTransport, recordError }) {
    Object.assign(this, { card, state, mode, publish, ladderOptions, recordError });
    this.run = null;
    this.$ = (sel) => card.querySelector(sel);
    this.$('#multi-start').addEventListener('click', () => this.start());
    this.$('#multi-stop').addEventListener('click', () => this.stop());
    const note = this.$('#multi-note');
    note.hidden = !mode.note && !mode.compare;
    note.textContent = mode.compare
      ? `Compared through the lab's lossy-link${mode.description ? ` (${mode.description})` : ''}: four channels at ${COMPARE.rate} messages/s each, on one WebTransport session and on one WebSocket, both through lossy-link's relays; publishing goes straight to the server. `
        + `A stall is an arrival more than ${STALL_INTERVALS} publish intervals (${STALL_INTERVALS * 1000 / COMPARE.rate} ms) after the previous one on its lane; `
        + 'its co-stall is how many lanes of the same connection were held up at that moment. One lost TCP segment holds every lane behind it; a lost QUIC packet only its own stream.'
      : mode.note;
    Object.assign(state, { state: 'idle', compare: mode.compare, lanes: {}, groups: {} });
    if (!offersWebTransport) {
      this.$('#multi-start').disabled = true;
      this.status('This server does not offer WebTransport.');
    }
  }

  status(text) { this.$('#multi-status').textContent = text; }

  /** Starts a run; `count` and `rate` override the mode's (messages per lane, per second). */
  async start(overrides = {}) {
    if (this.run) return;
    const cfg = { ...(this.mode.compare ? COMPARE : ALONE), ...overrides };
    const m = this.state;
    const id = `ms-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;
    const names = this.mode.compare ? ['webtransport', 'websocket'] : ['webtransport'];
    const run = { id, cfg, intervalMs: 1000 / cfg.rate, groups: {}, running: true, timer: null };
    this.run = run;
    Object.assign(m, { state: 'connecting', run: id, rate: cfg.rate, count: cfg.count, published: 0, publishErrors: 0, groups: {}, lanes: {} });
    this.$('#multi-start').disabled = true;
    this.$('#multi-stop').disabled = false;
    const root = this.$('#multi-lanes');
    root.textContent = '';
    root.dataset.compare = String(this.mode.compare);
    this.status(`Opening ${names.length > 1 ? 'a WebTransport session and a WebSocket' : 'a WebTransport session'}…`);
    await Promise.all(names.map((name) => this.openGroup(run, name, root)));
    if (!run.running) return;
    const open = Object.values(run.groups).filter((g) => g.ladder);
    if (open.length === 0) {
      this.status(`Unavailable: ${Object.values(m.groups).map((g) => `${g.transport}: ${g.reason}`).join('; ')}`);
      this.finish(run, 'unavailable');
      return;
    }
    await Promise.race([Promise.all(open.flatMap((g) => Object.values(g.subs).map((s) => s.ready))), sleep(5000)]);
    m.state = 'running';
    this.status(`Publishing ${cfg.rate} messages/s to each of four channels (${cfg.count} each).`);
    run.timer = setInterval(() => this.render(), 250);
    await this.publishAll(run);
    if (!run.running) return;
    m.state = 'draining';
    this.status('Published; waiting for every lane…');
    const deadline = performance.now() + DRAIN_MS;
    while (run.running && performance.now() < deadline && !this.caughtUp(run)) await sleep(50);
    if (run.running) this.finish(run, 'done');
  }

  /** Opens one connection and subscribes its four lanes. */
  async openGroup(run, name, root) {
    const m = this.state;
    const gs = { transport: name, state: 'connecting', reason: '', lanes: {}, coStall: summarise([]) };
    m.groups[name] = gs;
    if (name === 'webtransport') m.lanes = gs.lanes;
    const el = document.createElement('div');
    el.className = 'lane-group';
    el.dataset.group = name;
    el.innerHTML = '<h3></h3><p class="co-stall" data-role="co-stall" aria-live="off"></p><div class="lanes"></div>';
    el.querySelector('h3').textContent = GROUPS[name].title;
    root.append(el);
    const g = { name, el, ladder: null, subs: {}, laneEls: {}, seen: {}, trace: {}, stalls: [] };
    run.groups[name] = g;
    const ladder = new Ladder({ force: name, remember: false, ...this.ladderOptions, ...(this.mode.compare ? this.mode.route : {}) });
    try {
      await ladder.connect();
    } catch (err) {
      Object.assign(gs, { state: 'unavailable', reason: err.message });
      el.querySelector('[data-role=co-stall]').textContent = `${name} unavailable: ${err.message}`;
      ladder.close();
      return;
    }
    if (!run.running) { ladder.close(); return; }
    g.ladder = ladder;
    gs.state = 'open';
    for (const lane of LANES) this.addLane(run, g, gs, lane);
  }

  addLane(run, g, gs, lane) {
    const ls = { channel: `${run.id}-${lane}`, published: 0, received: 0, duplicates: 0, outOfOrder: 0, missing: null,
      stalls: 0, stalled: false, recent: [], maxLatencyWhileOtherStalled: 0, last: 0, lastAt: null, p50: null, p99: null };
    gs.lanes[lane] = ls;
    g.seen[lane] = new Set();
    g.trace[lane] = [];
    const el = document.createElement('div');
    el.className = 'lane';
    el.dataset.lane = lane;
    el.dataset.group = g.name;
    el.innerHTML = '<h4></h4><svg data-role="spark" class="lane-spark" viewBox="0 0 300 60" preserveAspectRatio="none" role="img"></svg>'
      + '<p data-role="lane-figures" aria-live="off"></p>';
    el.querySelector('h4').textContent = `${GROUPS[g.name].lane} ${lane.toUpperCase()}`;
    if (g.name === 'webtransport') {
      const btn = document.createElement('button');
      btn.type = 'button';
      btn.className = 'secondary';
      btn.dataset.role = 'stall';
      btn.setAttribute('aria-pressed', 'false');
      btn.textContent = `Stall stream ${lane.toUpperCase()}`;
      btn.addEventListener('click', () => this.toggleStall(g, lane, btn));
      el.append(btn);
    }
    g.el.querySelector('.lanes').append(el);
    g.laneEls[lane] = el;
    g.subs[lane] = g.ladder.subscribe(ls.channel, { since: 0 }, (msg) => this.onMessage(run, g, gs, lane, msg));
  }

  onMessage(run, g, gs, lane, msg) {
    const ls = gs.lanes[lane];
    const seen = g.seen[lane];
    if (seen.has(msg.offset)) { ls.duplicates++; return; }
    seen.add(msg.offset);
    if (msg.offset < ls.last) ls.outOfOrder++;
    ls.last = Math.max(ls.last, msg.offset);
    ls.received++;
    const now = performance.now();
    const stall = stallOf(lane, ls.lastAt, now, run.intervalMs);
    ls.lastAt = now;
    if (stall) {
      ls.stalls++;
      g.stalls.push(stall);
      if (g.stalls.length > MAX_STALLS) g.stalls.shift();
    }
    const lat = Math.max(0, Date.now() - msg.ts);
    const trace = g.trace[lane];
    trace.push(lat);
    if (trace.length > TRACE) trace.shift();
    ls.recent.push(lat);
    if (ls.recent.length > 20) ls.recent.shift();
    if (Object.values(gs.lanes).some((o) => o !== ls && o.stalled)) {
      ls.maxLatencyWhileOtherStalled = Math.max(ls.maxLatencyWhileOtherStalled, lat);
    }
  }

  /**
   * Publishes `count` messages to each lane's channel at `rate`, the lanes
   * evenly staggered within the interval (as the bench does), so a lane's
   * stall is the network's and not four publishes landing in one packet.
   */
  async publishAll(run) {
    const { rate, count, pad } = run.cfg;
    const n = LANES.length;
    const padding = 'y'.repeat(pad);
    const m = this.state;
    const sent = Object.fromEntries(LANES.map((l) => [l, 0]));
    const inFlight = new Set();
    const t0 = performance.now();
    for (let slot = 0; slot < count * n && run.running; slot++) {
      const lane = LANES[slot % n];
      const wait = t0 + (slot * 1000) / (rate * n) - performance.now();
      if (wait > 1) await sleep(wait);
      if (!run.running) break;
      const channel = `${run.id}-${lane}`;
      const p = this.publish(channel, { lane, pad: padding }).then(() => {
        sent[lane]++;
        for (const gs of Object.values(m.groups)) if (gs.lanes[lane]) gs.lanes[lane].published = sent[lane];
        m.published = Math.min(...Object.values(sent));
      }, (err) => { m.publishErrors++; this.recordError('lanes publish', err); });
      inFlight.add(p);
      p.then(() => inFlight.delete(p));
      if (inFlight.size >= MAX_IN_FLIGHT) await Promise.race(inFlight);
    }
    await Promise.all(inFlight);
  }

  caughtUp(run) {
    return Object.entries(run.groups).filter(([, g]) => g.ladder)
      .every(([name]) => Object.values(this.state.groups[name].lanes).every((ls) => ls.stalled || ls.received >= ls.published));
  }

  toggleStall(g, lane, btn) {
    const ls = this.state.groups[g.name]?.lanes[lane];
    const sub = g.subs[lane];
    if (!ls || !sub || !this.run) return;
    ls.stalled = !ls.stalled;
    if (ls.stalled) sub.pause(); else sub.resume();
    btn.setAttribute('aria-pressed', String(ls.stalled));
    btn.textContent = `${ls.stalled ? 'Resume' : 'Stall'} stream ${lane.toUpperCase()}`;
    this.render();
  }

  stop() {
    if (this.run) this.finish(this.run, 'stopped');
  }

  /** Ends `run`: counts what never arrived, closes the connections. */
  finish(run, how) {
    run.running = false;
    clearInterval(run.timer);
    for (const [name, g] of Object.entries(run.groups)) {
      for (const [lane, ls] of Object.entries(this.state.groups[name].lanes)) {
        let missing = 0;
        for (let o = 1; o <= ls.published; o++) if (!g.seen[lane].has(o)) missing++;
        ls.missing = missing;
      }
      g.ladder?.close();
    }
    this.render();
    this.state.state = how;
    if (this.run === run) this.run = null;
    this.$('#multi-start').disabled = false;
    this.$('#multi-stop').disabled = true;
    if (how === 'done') {
      const short = Object.values(this.state.groups).flatMap((gs) => Object.entries(gs.lanes)
        .filter(([, ls]) => ls.missing || ls.duplicates).map(([l, ls]) => `${gs.transport} ${l}: ${ls.missing} missing, ${ls.duplicates} repeated`));
      this.status(short.length ? `Done: ${short.join('; ')}.` : `Done: every lane got each of its ${this.state.published} messages once.`);
    } else if (how === 'stopped') {
      this.status('Stopped.');
    }
  }

  render() {
    const run = this.run;
    if (!run) return;
    const groups = Object.values(run.groups).filter((g) => g.ladder);
    // One scale for every lane, so a stall on one connection compares with
    // the other's at a glance.
    let top = STALL_INTERVALS * run.intervalMs;
    for (const g of groups) {
      for (const t of Object.values(g.trace)) if (t.length) top = Math.max(top, percentile([...t].sort((a, b) => a - b), 99) * 1.1);
    }
    for (const g of groups) {
      const gs = this.state.groups[g.name];
      gs.coStall = summarise(g.stalls);
      const c = gs.coStall;
      g.el.querySelector('[data-role=co-stall]').textContent = c.stalls === 0 ? 'Stalls: 0.'
        : `Stalls: ${c.stalls}; co-stall mean ${c.coStallMean.toFixed(2)} of ${LANES.length} lanes, max ${c.coStallMax}; ${c.shared} held more than one lane.`;
      for (const lane of LANES) {
        const ls = gs.lanes[lane];
        const el = g.laneEls[lane];
        if (!ls || !el) continue;
        const sorted = [...g.trace[lane]].sort((a, b) => a - b);
        ls.p50 = percentile(sorted, 50);
        ls.p99 = percentile(sorted, 99);
        ls.recentP50 = percentile([...ls.recent].sort((a, b) => a - b), 50);
        el.dataset.stalled = String(ls.stalled);
        drawSpark(el.querySelector('[data-role=spark]'), g.trace[lane], { top });
        el.querySelector('[data-role=lane-figures]').textContent = `${ls.stalled ? 'Stalled (not read). ' : ''}`
          + `Received ${ls.received} of ${ls.published}; backlog ${ls.published - ls.received}; `
          + `${ls.stalls} stalls; latency p50 ${fmtMs(ls.p50)}, p99 ${fmtMs(ls.p99)} (last ${g.trace[lane].length}).`;
      }
    }
  }
}

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }
