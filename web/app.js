// app.js: the comparison page. One panel per rung, each a Ladder client
// forced onto that rung; one unforced client showing the fallback race; a
// workload publisher; /api/stats deltas; the measured comparison table; the
// independent-streams lanes (lanes.js); the HTTP version of the page and of
// each rung's requests (protocol.js).
//
// Everything the page knows is mirrored in `window.ladderState` (plain data)
// so the browser tests can wait on it instead of scraping the DOM.

import { Ladder, httpPublish } from './ladder.js';
import { currentNetwork, makePublisher, networkOptions, renderNetworkChoice } from './network.js';
import { fmtBytes, fmtMs, percentile } from './figures.js';
import { drawSpark } from './spark.js';
import { LanesDemo, lanesMode } from './lanes.js';
import { ProtocolWatch, describeVersion } from './protocol.js';
import { setupRealities } from './realities.js';
import { PresenceView } from './presence-view.js';

const PANELS = [
  { id: 'wt', title: 'WebTransport · streams', rung: 'webtransport', delivery: 'stream',
    sub: 'HTTP/3 over QUIC; each channel on its own bidirectional stream.' },
  { id: 'wtdg', title: 'WebTransport · datagrams', rung: 'webtransport', delivery: 'datagram',
    sub: 'QUIC datagrams: no retransmission, no ordering; subscribe on a stream, data as datagrams.' },
  { id: 'ws', title: 'WebSocket', rung: 'websocket', sub: 'One TCP connection: an HTTP/1.1 Upgrade, or over TLS an extended CONNECT stream of HTTP/2.' },
  { id: 'sse', title: 'Server-Sent Events', rung: 'sse', sub: 'One HTTP response that never ends; publishing is a separate POST.' },
  { id: 'longpoll', title: 'Long polling', rung: 'longpoll', sub: 'A GET the server holds until there is news, then asked again.' },
  { id: 'poll', title: 'Short polling', rung: 'poll', sub: 'A GET on a timer, whether or not anything happened.' },
];

/** What a polling rung's reconnect is (web/ladder/transports/poll.js). */
const POLL_RECONNECT = 'The browser opens a new connection by itself (and resends a cut GET); every GET carries since=. '
  + 'Counted as a reconnect: a poll answered on a connection opened since the previous answer';

// The static rows of the comparison table, in our own words.
const FACTS = {
  webtransport: {
    direction: 'Both ways, one session; many independent streams',
    reconnect: 'Library: backoff with jitter, new session, resubscribe from the cursor',
  },
  webtransport_dg: {
    direction: 'Both ways; datagrams may be lost or reordered',
    reconnect: 'Library: as streams; a lost datagram is not resent',
  },
  websocket: {
    direction: 'Both ways, one connection',
    reconnect: 'Library: backoff with jitter, resubscribe from the cursor',
  },
  sse: {
    direction: 'Server to client; client to server by POST',
    reconnect: 'Built into EventSource (Last-Event-ID); here the library\'s cursor drives it',
  },
  longpoll: {
    direction: 'Client asks; server answers when it has news',
    reconnect: POLL_RECONNECT,
  },
  poll: {
    direction: 'Client asks on a timer',
    reconnect: POLL_RECONNECT,
  },
};

const STATS_KEYS = ['webtransport', 'websocket', 'sse', 'longpoll', 'poll'];

const state = {
  ready: false,
  info: null,
  // The HTTP version the page was loaded over (Navigation Timing).
  page: { http: null },
  panels: {},
  run: { state: 'idle', runs: 0 },
  multi: { state: 'idle', lanes: {} },
  // The "through each network" table's rows, by condition (realities.js).
  networks: { state: 'idle', rows: {} },
  // Who is in PRESENCE_CHANNEL, as the Automatic panel is told, and every
  // join and leave it heard; `channels` the same for every channel with a
  // list on the page (presence-view.js).
  presence: { members: [], log: [], channels: {} },
  errors: [],
};

/**
 * The always-on channel the panels join as presence members. Only panels
 * whose rung holds a connection that carries ops (WebTransport, WebSocket)
 * and the Automatic panel join: on SSE and polling a second channel would be
 * a second stream or request loop, and would skew the figures the page
 * measures. Every panel joins the workload's channel (Panel.subscribe).
 */
const PRESENCE_CHANNEL = 'ladder.presence';
const PRESENCE_PANELS = new Set(['wt', 'wtdg', 'ws', 'auto']);
/** The presence card's lists, one per channel in use; set in main(). */
let presenceView = null;
window.ladderState = state;

const $ = (sel, root = document) => root.querySelector(sel);
const params = new URLSearchParams(location.search);

function recordError(where, err) {
  state.errors.push(`${where}: ${err?.message || err}`);
}

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

// ---- panels ---------------------------------------------------------------

class Panel {
  constructor(cfg, root, ladderOptions) {
    this.cfg = cfg;
    this.el = $('#panel-tpl').content.firstElementChild.cloneNode(true);
    this.el.id = `panel-${cfg.id}`;
    this.el.dataset.panel = cfg.id;
    $('.panel-title', this.el).textContent = cfg.title;
    $('.panel-sub', this.el).textContent = cfg.sub;
    const drop = $('[data-role=drop]', this.el);
    drop.setAttribute('aria-label', `Drop the ${cfg.title} connection`);
    drop.addEventListener('click', () => this.drop());
    root.append(this.el);
    this.ladder = new Ladder({ force: cfg.rung || null, remember: !cfg.rung, ...ladderOptions });
    if (PRESENCE_PANELS.has(cfg.id)) {
      const watch = cfg.id === 'auto';
      this.presenceSub = this.ladder.subscribe(PRESENCE_CHANNEL, {
        presence: { client: cfg.id, info: this.presenceInfo, events: watch },
        onPresence: watch ? presenceView?.track(PRESENCE_CHANNEL,
          'Always on: the WebTransport and WebSocket panels and the Automatic one.') : undefined,
      }, () => {});
    }
    this.s = {
      id: cfg.id, rung: cfg.rung, transport: null, state: 'idle', reason: '',
      channel: null, expected: 0, received: 0, outOfOrder: 0, duplicates: 0,
      duplicatesDropped: 0, gaps: 0, missing: null, complete: false,
      p50: null, p95: null, p99: null, requests: null, requestsPerMsg: null,
      bytesOutPerMsg: null, bytesInPerMsg: null, connectionsOpen: null,
      reconnects: 0, drops: 0, resumeMs: null, dropDuringRun: false, lastDropResult: null, report: null,
      viaDatagram: 0, http: null, httpHow: '',
    };
    state.panels[cfg.id] = this.s;
    this.resetRun(null, 0);
    this.ladder.on('state', (ev) => {
      this.s.state = ev.state;
      this.s.transport = this.ladder.transport;
      this.s.reason = ev.reason || '';
      this.render();
    });
    this.ladder.on('replaced', () => {
      this.s.reconnects = this.ladder.stats.reconnects;
      this.render();
    });
    this.ladder.on('open', () => {
      this.s.transport = this.ladder.transport;
      this.s.reconnects = this.ladder.stats.reconnects;
      const d = this.ladder.lastDrop;
      if (d?.resumedAt) this.s.resumeMs = Math.round(d.resumedAt - d.at);
      this.render();
    });
    this.ladder.on('report', (r) => { this.s.report = r; this.render(); });
  }

  start() {
    this.ladder.connect().catch((err) => {
      this.s.reason = err.message;
      this.render();
    });
  }

  get statsKey() { return this.ladder.transport || this.cfg.rung; }
  get delivery() { return this.cfg.delivery || 'stream'; }
  /** What the panel's presence member carries: its title and rung. */
  get presenceInfo() { return { title: this.cfg.title, rung: this.cfg.rung || 'automatic' }; }
  get usable() { return this.s.state !== 'unavailable' && this.s.state !== 'closed'; }

  resetRun(channel, expected) {
    // The Automatic panel watches the workload channel's presence: once it
    // moves on, nobody uses the old channel and its list goes.
    if (this.cfg.id === 'auto' && this.s.channel && this.s.channel !== channel) presenceView?.untrack(this.s.channel);
    this.sub?.unsubscribe();
    this.sub = null;
    this.seen = new Set();
    this.maxOffset = 0;
    this.latencies = [];
    Object.assign(this.s, {
      channel, expected, received: 0, outOfOrder: 0, duplicates: 0, duplicatesDropped: 0,
      gaps: 0, missing: null, complete: false, p50: null, p95: null, p99: null,
      requests: null, requestsPerMsg: null, bytesOutPerMsg: null, bytesInPerMsg: null,
      dropDuringRun: false, viaDatagram: 0, firstMessageAt: null,
    });
  }

  /**
   * Every panel joins the workload channel's presence on the subscription
   * that reads the workload (no extra stream or request loop on any rung);
   * the Automatic panel also watches the joins and leaves.
   */
  subscribe(channel) {
    const watch = this.cfg.id === 'auto';
    this.sub = this.ladder.subscribe(channel, {
      since: 0,
      delivery: this.delivery,
      presence: { client: this.cfg.id, info: this.presenceInfo, events: watch },
      onPresence: watch ? presenceView?.track(channel, 'The running workload\'s channel: every panel, on its own rung.') : undefined,
    }, (msg) => this.onMessage(msg));
    return this.sub.ready;
  }

  onMessage(msg) {
    const s = this.s;
    if (this.seen.has(msg.offset)) { s.duplicates++; return; }
    this.seen.add(msg.offset);
    if (msg.offset < this.maxOffset) s.outOfOrder++;
    this.maxOffset = Math.max(this.maxOffset, msg.offset);
    s.received++;
    // Milliseconds after the page began loading: the time to first message.
    if (s.received === 1) s.firstMessageAt = Math.round(performance.now());
    this.latencies.push(Math.max(0, Date.now() - msg.ts));
    if (s.received >= s.expected && s.expected > 0) s.complete = true;
    this.dirty = true;
  }

  drop() {
    if (this.ladder.drop()) {
      this.s.drops = this.ladder.stats.drops;
      if (state.run.state === 'publishing' || state.run.state === 'draining') this.s.dropDuringRun = true;
      this.s.resumeMs = null;
      this.render();
    }
  }

  computeLatency() {
    const sorted = [...this.latencies].sort((a, b) => a - b);
    this.s.p50 = percentile(sorted, 50);
    this.s.p95 = percentile(sorted, 95);
    this.s.p99 = percentile(sorted, 99);
    if (this.sub) {
      this.s.duplicatesDropped = this.sub.stats.duplicatesDropped;
      this.s.gaps = this.sub.stats.gaps;
      this.s.viaDatagram = this.sub.stats.datagrams || 0;
    }
  }

  finish() {
    this.computeLatency();
    let missing = 0;
    for (let o = 1; o <= this.s.expected; o++) if (!this.seen.has(o)) missing++;
    this.s.missing = missing;
    if (this.s.dropDuringRun) {
      // Kept across later runs, for the Reconnect row of the table.
      this.s.lastDropResult = { run: state.run.runs, lost: missing, repeated: this.s.duplicates, resumeMs: this.s.resumeMs };
    }
  }

  render() {
    const s = this.s;
    const el = this.el;
    el.dataset.state = s.state;
    el.dataset.transport = s.transport || '';
    el.dataset.complete = String(s.complete);
    const badge = $('[data-role=state]', el);
    badge.textContent = s.state === 'open' ? `open · ${s.transport}` : s.state;
    const set = (role, text) => { $(`[data-role=${role}]`, el).textContent = text; };
    set('received', s.expected ? `${s.received} / ${s.expected}` : `${s.received}`);
    set('ooo', String(s.outOfOrder));
    set('dups', `${s.duplicates} delivered · ${s.duplicatesDropped} dropped by client`);
    set('latency', s.p50 === null ? '–' : `${fmtMs(s.p50)} / ${fmtMs(s.p95)} / ${fmtMs(s.p99)}`);
    set('requests', s.requests === null ? '–' : `${s.requests}${s.requestsPerMsg !== null ? ` (${s.requestsPerMsg.toFixed(2)} per message)` : ''}`);
    set('bytes', s.bytesOutPerMsg === null ? '–' : `${fmtBytes(s.bytesOutPerMsg)} out · ${fmtBytes(s.bytesInPerMsg)} in`);
    set('reconnects', String(s.reconnects));
    const proto = protocols?.of(this.statsKey);
    s.http = proto?.version || null;
    s.httpHow = proto?.how || '';
    set('http', s.http ? describeVersion(s.http)
      : this.statsKey === 'websocket' ? 'not visible to the page (see the table)' : 'not reported yet');
    $('[data-role=http]', el).title = s.httpHow;
    set('resume', s.drops === 0 ? '–' : s.resumeMs === null ? 'reconnecting…' : `resumed in ${s.resumeMs} ms`);
    const notes = [];
    if (s.state === 'unavailable' || s.state === 'reconnecting') notes.push(s.reason);
    if (this.cfg.rung === 'poll') {
      const iv = this.ladder.options.pollIntervalMs;
      notes.push(`Interval ${iv} ms: expect a median near ${Math.round(iv / 2)} ms.`);
    }
    if (s.missing !== null) {
      notes.push(s.missing === 0 && s.duplicates === 0 && s.outOfOrder === 0
        ? 'Every message, in order, once.' : `${s.missing} missing.`);
    }
    set('note', notes.filter(Boolean).join(' '));
    $('[data-role=drop]', el).disabled = !(s.state === 'open');
    drawSpark($('[data-role=spark]', el), this.latencies);
    if (this.reportEl) renderReport(this.reportEl, s);
  }
}

function renderReport(el, s) {
  const r = s.report;
  el.textContent = '';
  if (!r) { el.textContent = 'Racing…'; return; }
  const p = document.createElement('p');
  p.innerHTML = '';
  const strong = document.createElement('strong');
  strong.textContent = r.winner ? `Won: ${r.winner}` : 'No rung won';
  p.append(strong, document.createTextNode(` (${r.reason})`));
  const ul = document.createElement('ul');
  for (const [name, why] of Object.entries(r.losers)) {
    const li = document.createElement('li');
    li.textContent = `${name}: ${why}`;
    ul.append(li);
  }
  el.append(p, ul);
}

// ---- server stats ---------------------------------------------------------

async function fetchStats() {
  const res = await fetch('/api/stats', { cache: 'no-store' });
  if (!res.ok) throw new Error(`/api/stats answered ${res.status}`);
  return (await res.json()).transports || {};
}

function statsDelta(before, after) {
  const out = {};
  for (const key of STATS_KEYS) {
    const a = after[key];
    if (!a) continue;
    const b = before[key] || {};
    out[key] = {};
    for (const f of ['requests', 'messages_out', 'bytes_out', 'bytes_in', 'connections_total']) {
      out[key][f] = (a[f] || 0) - (b[f] || 0);
    }
    out[key].connections_open = a.connections_open || 0;
  }
  return out;
}

function applyStats(panels, delta) {
  // Panels that share a server counter (the two WebTransport panels, the
  // automatic client on its winning rung) split it by messages received.
  const share = {};
  for (const p of panels) share[p.statsKey] = (share[p.statsKey] || 0) + p.s.received;
  for (const p of panels) {
    const d = delta[p.statsKey];
    if (!d) continue;
    const recvAll = share[p.statsKey] || 0;
    const sharers = panels.filter((q) => q.statsKey === p.statsKey).length;
    p.s.requests = sharers > 1 ? Math.round(d.requests / sharers) : d.requests;
    p.s.requestsPerMsg = p.s.received ? p.s.requests / p.s.received : null;
    p.s.bytesOutPerMsg = recvAll ? d.bytes_out / recvAll : null;
    p.s.bytesInPerMsg = recvAll ? d.bytes_in / recvAll : null;
    p.s.connectionsOpen = d.connections_open;
    p.s.sharedStats = sharers > 1;
  }
}

// ---- the workload ---------------------------------------------------------

let panels = [];
let autoPanel = null;
/** The HTTP version of the page and of each rung's requests; set in main(). */
let protocols = null;
/** Publishes one workload message (see network.js for the lab's case). */
let publish = (channel, data) => httpPublish(location.origin, channel, data);
/** Options that route a client through the page's network condition. */
let netOpts = {};
/** The independent-streams card (lanes.js). */
let lanes = null;

function allPanels() { return autoPanel ? [...panels, autoPanel] : panels; }

async function runWorkload() {
  const run = state.run;
  if (run.state === 'subscribing' || run.state === 'publishing' || run.state === 'draining') return;
  const k = clampInt($('#k').value, 1, 10000, 200);
  const rate = clampInt($('#rate').value, 1, 2000, 50);
  const pad = clampInt($('#payload').value, 0, 60000, 64);
  const channel = `cmp-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;
  Object.assign(run, {
    state: 'subscribing', channel, k, rate, pad, published: 0, startedAt: Date.now(),
    finishedAt: null, error: null, runs: run.runs + 1, complete: false,
  });
  setRunButtons(true);
  const active = allPanels().filter((p) => p.usable);
  status(`Subscribing ${active.length} panels to ${channel}…`);
  for (const p of active) p.resetRun(channel, k);
  try {
    await Promise.race([Promise.all(active.map((p) => p.subscribe(channel))), sleep(5000)]);
    const before = await fetchStats();
    run.state = 'publishing';
    run.publishingAt = Math.round(performance.now());
    status(`Publishing ${k} messages at ${rate}/s…`);
    const ticker = setInterval(() => liveUpdate(active, before), 500);
    const t0 = performance.now();
    const padding = 'x'.repeat(pad);
    try {
      for (let i = 1; i <= k; i++) {
        const due = t0 + ((i - 1) * 1000) / rate;
        const wait = due - performance.now();
        if (wait > 1) await sleep(wait);
        await publish(channel, { seq: i, pad: padding });
        run.published = i;
      }
      run.state = 'draining';
      status(`Published ${k}; waiting for every panel…`);
      const pollIv = panels.find((p) => p.cfg.rung === 'poll')?.ladder.options.pollIntervalMs || 1000;
      const deadline = performance.now() + Math.max(10000, 3 * pollIv + 5000);
      while (performance.now() < deadline && !active.every((p) => p.s.received >= k || !p.usable)) await sleep(50);
    } finally {
      clearInterval(ticker);
    }
    const after = await fetchStats();
    for (const p of active) p.finish();
    applyStats(active, statsDelta(before, after));
    run.complete = active.every((p) => p.s.received >= k);
    run.state = 'done';
    run.finishedAt = Date.now();
    const short = active.filter((p) => p.s.received < k).map((p) => p.cfg.title);
    status(short.length ? `Done: ${short.join(', ')} did not get every message.` : `Done: ${active.length} panels got all ${k} messages.`);
  } catch (err) {
    run.state = 'failed';
    run.error = err.message;
    recordError('workload', err);
    status(`Failed: ${err.message}`);
  }
  setRunButtons(false);
  renderAll();
}

async function liveUpdate(active, before) {
  for (const p of active) p.computeLatency();
  try { applyStats(active, statsDelta(before, await fetchStats())); } catch { /* next tick */ }
  renderAll();
}

function clampInt(v, lo, hi, dflt) {
  const n = Math.round(Number(v));
  return Number.isFinite(n) ? Math.min(hi, Math.max(lo, n)) : dflt;
}

function status(text) { $('#run-status').textContent = text; }

function setRunButtons(running) {
  $('#run').disabled = running;
  $('#drop-all').disabled = !running;
}

function renderAll() {
  for (const p of allPanels()) {
    if (p.dirty) { p.computeLatency(); p.dirty = false; }
    p.render();
  }
  renderSummary();
}

// ---- the comparison table -------------------------------------------------

function renderSummary() {
  const table = $('#summary');
  const thead = table.tHead;
  const tbody = table.tBodies[0];
  thead.textContent = '';
  tbody.textContent = '';
  const hr = document.createElement('tr');
  hr.append(cell('th', state.page.http ? `Aspect (page over ${state.page.http})` : 'Aspect', 'col'));
  for (const p of panels) hr.append(cell('th', p.cfg.title, 'col'));
  thead.append(hr);
  const k = state.run.k;
  const rows = [
    ['Direction', (p) => facts(p).direction],
    ['HTTP', (p) => (p.s.http ? `${p.s.http}: ${p.s.httpHow}` : `not reported: ${p.s.httpHow}`)],
    ['Delivered (last run)', (p) => p.s.expected
      ? `${p.s.received}/${p.s.expected}, ${p.s.outOfOrder ? `${p.s.outOfOrder} out of order` : 'in order'}, ${p.s.duplicates} duplicates`
      : '–'],
    ['Latency p50 / p99', (p) => (p.s.p50 === null ? '–' : `${fmtMs(p.s.p50)} / ${fmtMs(p.s.p99)}`)],
    ['Server load: HTTP requests', (p) => (p.s.requests === null ? '–'
      : `${p.s.requests} for ${k} messages${p.s.connectionsOpen ? `, ${p.s.connectionsOpen} held open` : ''}`)],
    ['Bandwidth: bytes on the wire per message', (p) => (p.s.bytesOutPerMsg === null ? '–'
      : `${fmtBytes(p.s.bytesOutPerMsg + (p.s.bytesInPerMsg || 0))} (${fmtBytes(p.s.bytesOutPerMsg)} down, ${fmtBytes(p.s.bytesInPerMsg)} up)${p.s.sharedStats ? ' *' : ''}`)],
    ['Reconnect', (p) => {
      const d = p.s.lastDropResult;
      const measured = p.s.drops === 0 ? 'not tried yet (Drop connection)'
        : p.s.resumeMs === null ? 'reconnecting…'
          : d ? `dropped mid-run ${d.run}, resumed in ${d.resumeMs} ms, ${d.lost} lost, ${d.repeated} repeated`
            : `resumed in ${p.s.resumeMs} ms`;
      return `${facts(p).reconnect}. Measured: ${measured}`;
    }],
  ];
  for (const [label, fn] of rows) {
    const tr = document.createElement('tr');
    tr.append(cell('th', label, 'row'));
    for (const p of panels) {
      const unavailable = !p.usable && !p.s.expected;
      tr.append(cell('td', unavailable && label !== 'Direction' ? 'not available on this server' : fn(p)));
    }
    tbody.append(tr);
  }
}

function facts(p) { return p.cfg.delivery === 'datagram' ? FACTS.webtransport_dg : FACTS[p.cfg.rung]; }

function cell(tag, text, scope) {
  const c = document.createElement(tag);
  c.textContent = text;
  if (scope) c.scope = scope;
  return c;
}

// ---- start-up ---------------------------------------------------------------

async function loadInfo() {
  for (let attempt = 0; ; attempt++) {
    try {
      const res = await fetch('/api/info', { cache: 'no-store' });
      if (res.ok) return await res.json();
    } catch { /* retry */ }
    await sleep(Math.min(5000, 250 * 2 ** attempt));
  }
}

async function main() {
  protocols = new ProtocolWatch(() => { if (state.ready) renderAll(); });
  state.page.http = protocols.page;
  $('#page-protocol').textContent = state.page.http
    ? `This page came over ${describeVersion(state.page.http)}, as the browser reports it (Navigation Timing nextHopProtocol).`
    : 'This browser does not say which HTTP version carried the page.';
  const info = await loadInfo();
  state.info = info;
  const wt = info.webtransport;
  $('#server-info').textContent = `Ladder ${info.version || ''} offers ${info.transports.join(', ')}.`
    + (wt?.url && info.transports.includes('webtransport')
      ? ` WebTransport at ${wt.url}, certificate SHA-256 ${String(wt.cert_sha256).slice(0, 16)}… (passed to the browser as serverCertificateHashes).` : '');

  const network = currentNetwork(info);
  state.network = network ? network.name : (info.lab ? 'direct' : null);
  netOpts = networkOptions(network);
  renderNetworkChoice(info, network, $('#network'));
  if (network) publish = await makePublisher(network, httpPublish);

  const pollInput = $('#poll-interval');
  const pollMs = () => clampInt(pollInput.value, 50, 10000, 1000);
  const grid = $('#panel-grid');
  presenceView = new PresenceView($('#presence-channels'), state.presence);
  panels = PANELS.map((cfg) => new Panel(cfg, grid, { pollIntervalMs: pollMs(), ...netOpts }));

  const autoOpts = { ...netOpts };
  if (params.get('wt_url')) autoOpts.wtUrl = params.get('wt_url');
  if (params.get('reprobe_ms')) autoOpts.reprobeMs = Number(params.get('reprobe_ms'));
  if (params.get('stagger_ms')) autoOpts.staggerMs = Number(params.get('stagger_ms'));
  autoPanel = new Panel({ id: 'auto', title: 'Automatic', rung: null, sub: 'No rung forced: the library chooses.' }, $('#auto-panel'), autoOpts);
  autoPanel.reportEl = document.createElement('div');
  autoPanel.reportEl.className = 'report';
  autoPanel.reportEl.setAttribute('aria-live', 'polite');
  autoPanel.el.insertBefore(autoPanel.reportEl, $('.figures', autoPanel.el));

  for (const p of allPanels()) p.start();

  pollInput.addEventListener('change', () => {
    for (const p of allPanels()) p.ladder.setPollInterval(pollMs());
    renderAll();
  });
  $('#workload').addEventListener('submit', (ev) => { ev.preventDefault(); runWorkload(); });
  $('#drop-all').addEventListener('click', () => { for (const p of allPanels()) p.drop(); });
  setupRealities($('#networks-measured'), info, state.networks, {
    staggerMs: params.get('stagger_ms') ? Number(params.get('stagger_ms')) : null,
    only: params.get('networks') ? params.get('networks').split(',') : null,
  });
  lanes = new LanesDemo({
    card: $('#multi'), state: state.multi, mode: lanesMode(info), publish, ladderOptions: netOpts,
    offersWebTransport: info.transports.includes('webtransport'), recordError,
  });

  setInterval(() => {
    const live = state.run.state === 'publishing' || state.run.state === 'draining';
    if (live || allPanels().some((p) => p.dirty)) renderAll();
  }, 200);
  renderAll();
  state.ready = true;
  document.body.dataset.ready = 'true';
}

window.addEventListener('unhandledrejection', (ev) => recordError('unhandled', ev.reason));
window.ladderApp = { runWorkload, startMulti: (o) => lanes?.start(o), stopMulti: () => lanes?.stop(), panels: () => allPanels() };
main().catch((err) => recordError('start', err));
