// probe.js: one row of the page's "through each network" table. The main
// page opens this page in a frame through one lab condition (its own
// origin, so every request and connection crosses that network); here the
// automatic client races the rungs, a workload of `k` messages is published
// straight to the server (network.js's publisher), and what the client got
// is posted back to the main page: the rung it ended on and after how long,
// latency p50 / p99, reconnects, messages lost and repeated. Half-way
// through the workload the condition does its thing (see `midway`).

import { Ladder, RUNGS, httpPublish } from './ladder.js';
import { currentNetwork, makePublisher, networkOptions, switchNetwork } from './network.js';
import { percentile } from './figures.js';

const q = new URLSearchParams(location.search);
const num = (name, dflt, lo, hi) => {
  const v = Math.round(Number(q.get(name)));
  return Number.isFinite(v) && q.get(name) !== null ? Math.min(hi, Math.max(lo, v)) : dflt;
};
const K = num('k', 200, 1, 2000);
const RATE = num('rate', 100, 1, 1000);
/** How long the workload may take to arrive once published. */
const DRAIN_MS = 20000;

const status = (t) => { document.getElementById('probe-status').textContent = t; };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** What one client got of the workload on `channel`; `summary(k)` sums it up. */
function track(ladder, channel) {
  const seen = new Set();
  const latencies = [];
  const t = { seen, duplicated: 0, outOfOrder: 0, last: 0 };
  t.sub = ladder.subscribe(channel, { since: 0 }, (msg) => {
    if (seen.has(msg.offset)) { t.duplicated++; return; }
    seen.add(msg.offset);
    if (msg.offset < t.last) t.outOfOrder++;
    t.last = Math.max(t.last, msg.offset);
    latencies.push(Math.max(0, Date.now() - msg.ts));
  });
  t.summary = (k) => {
    const sorted = latencies.sort((a, b) => a - b);
    return {
      transport: ladder.transport,
      received: seen.size,
      lost: k - seen.size,
      duplicated: t.duplicated,
      outOfOrder: t.outOfOrder,
      p50: percentile(sorted, 50),
      p99: percentile(sorted, 99),
      reconnects: ladder.stats.reconnects,
    };
  };
  return t;
}

/**
 * What the workload does half-way through, by condition: network-switch
 * pulls the lab's lever; round-robin drops the client's connection, so its
 * reconnect goes to the balancer's next node; nat-timeout idles longer
 * than the NAT's timeout, so only heartbeats keep a connection through it.
 */
function midway(network) {
  const parts = network.name.split('+');
  const nat = Number(network.nat_timeout_ms);
  return {
    cut: parts.includes('network-switch'),
    drop: parts.includes('round-robin'),
    idleMs: parts.includes('nat-timeout') && nat > 0 ? nat + Math.max(2000, nat / 2) : 0,
  };
}

async function measure(network, info) {
  const opts = { ...networkOptions(network), remember: false, pollIntervalMs: 200 };
  if (q.get('stagger_ms')) opts.staggerMs = Number(q.get('stagger_ms'));
  const ladder = new Ladder(opts);
  let race = null;
  ladder.on('report', (r) => { race ??= r; });
  status(`${network.name}: racing the rungs…`);
  await ladder.connect();
  const publish = await makePublisher(network, httpPublish);
  const channel = `probe-${network.name.replaceAll('+', '.')}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;
  const plan = midway(network);
  // Through an idle window every rung is measured, forced, beside the
  // automatic client: whether heartbeats keep each one's connection alive.
  const forced = plan.idleMs > 0
    ? RUNGS.filter((r) => info.transports.includes(r)).map((r) => new Ladder({ ...opts, force: r }))
    : [];
  await Promise.all(forced.map((l) => Promise.race([l.connect(), sleep(10000)])));
  const auto = track(ladder, channel);
  const rungs = forced.map((l) => track(l, channel));
  await Promise.race([Promise.all([auto, ...rungs].map((t) => t.sub.ready)), sleep(5000)]);
  let t0 = performance.now();
  for (let i = 1; i <= K; i++) {
    const wait = t0 + ((i - 1) * 1000) / RATE - performance.now();
    if (wait > 1) await sleep(wait);
    await publish(channel, { seq: i });
    if (i === Math.ceil(K / 2)) {
      if (plan.cut) await switchNetwork(network.direct);
      if (plan.drop) ladder.drop();
      if (plan.idleMs) {
        // Reconnects are counted from here: what the idle did, not how
        // the clients' start-up shuffled the browser's connections.
        for (const l of forced) l.reconnectsBeforeIdle = l.stats.reconnects;
        status(`${network.name}: idle for ${plan.idleMs} ms…`);
        await sleep(plan.idleMs);
        t0 += plan.idleMs;
      }
    }
    if (i % 20 === 0) status(`${network.name} on ${ladder.transport}: ${auto.seen.size}/${i} arrived`);
  }
  const deadline = performance.now() + DRAIN_MS;
  while ([auto, ...rungs].some((t) => t.seen.size < K) && performance.now() < deadline) await sleep(50);
  const result = {
    condition: network.name,
    ...auto.summary(K),
    firstChoice: race?.winner === 'webtransport',
    readyMs: race?.elapsedMs ?? null,
    losers: race?.losers || {},
    k: K,
    idleMs: plan.idleMs || null,
    natTimeoutMs: plan.idleMs ? Number(network.nat_timeout_ms) : null,
    rungs: Object.fromEntries(rungs.map((t, i) => {
      const l = forced[i];
      return [l.options.force, { ...t.summary(K), reconnects: l.stats.reconnects - (l.reconnectsBeforeIdle ?? 0) }];
    })),
  };
  const clean = (r) => r.lost === 0 && r.duplicated === 0 && r.outOfOrder === 0;
  result.works = clean(result) && Object.values(result.rungs).every(clean);
  for (const l of [ladder, ...forced]) l.close();
  return result;
}

async function main() {
  const res = await fetch('/api/info', { cache: 'no-store' });
  const info = await res.json();
  const network = currentNetwork(info);
  if (!network) throw new Error('this page was not opened through a lab condition');
  const result = await measure(network, info);
  status(`${network.name}: ${result.transport}, ${result.received}/${result.k}`);
  return result;
}

// The page that opened this frame, the only one told the result.
const target = q.get('parent');
main().then(
  (result) => window.parent.postMessage({ type: 'ladder-probe', result }, target || '*'),
  (err) => {
    status(`failed: ${err.message}`);
    window.parent.postMessage({ type: 'ladder-probe', result: { condition: q.get('network'), error: err.message } }, target || '*');
  },
);
