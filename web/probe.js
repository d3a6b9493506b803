// probe.js: one row of the page's "through each network" table. The main
// page opens this page in a frame through one lab condition (its own
// origin, so every request and connection crosses that network); here the
// automatic client races the rungs, a workload of `k` messages is published
// straight to the server (network.js's publisher), and what the client got
// is posted back to the main page: the rung it ended on and after how long,
// latency p50 / p99, reconnects, messages lost and repeated. Through
// network-switch the lab's lever is pulled half-way through the workload.

import { Ladder, httpPublish } from './ladder.js';
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

async function measure(network) {
  const opts = { ...networkOptions(network), remember: false, pollIntervalMs: 200 };
  if (q.get('stagger_ms')) opts.staggerMs = Number(q.get('stagger_ms'));
  const ladder = new Ladder(opts);
  let race = null;
  ladder.on('report', (r) => { race ??= r; });
  status(`${network.name}: racing the rungs…`);
  await ladder.connect();
  const publish = await makePublisher(network, httpPublish);
  const channel = `probe-${network.name.replaceAll('+', '.')}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;
  const seen = new Set();
  const latencies = [];
  let duplicated = 0;
  let outOfOrder = 0;
  let last = 0;
  const sub = ladder.subscribe(channel, { since: 0 }, (msg) => {
    if (seen.has(msg.offset)) { duplicated++; return; }
    seen.add(msg.offset);
    if (msg.offset < last) outOfOrder++;
    last = Math.max(last, msg.offset);
    latencies.push(Math.max(0, Date.now() - msg.ts));
  });
  await Promise.race([sub.ready, sleep(5000)]);
  const cut = network.name.split('+').includes('network-switch');
  const t0 = performance.now();
  for (let i = 1; i <= K; i++) {
    const wait = t0 + ((i - 1) * 1000) / RATE - performance.now();
    if (wait > 1) await sleep(wait);
    await publish(channel, { seq: i });
    if (cut && i === Math.ceil(K / 2)) await switchNetwork(network.direct);
    if (i % 20 === 0) status(`${network.name} on ${ladder.transport}: ${seen.size}/${i} arrived`);
  }
  const deadline = performance.now() + DRAIN_MS;
  while (seen.size < K && performance.now() < deadline) await sleep(50);
  const sorted = latencies.sort((a, b) => a - b);
  const result = {
    condition: network.name,
    transport: ladder.transport,
    firstChoice: race?.winner === 'webtransport',
    readyMs: race?.elapsedMs ?? null,
    losers: race?.losers || {},
    k: K,
    received: seen.size,
    lost: K - seen.size,
    duplicated,
    outOfOrder,
    p50: percentile(sorted, 50),
    p99: percentile(sorted, 99),
    reconnects: ladder.stats.reconnects,
  };
  result.works = result.lost === 0 && duplicated === 0 && outOfOrder === 0;
  ladder.close();
  return result;
}

async function main() {
  const res = await fetch('/api/info', { cache: 'no-store' });
  const network = currentNetwork(await res.json());
  if (!network) throw new Error('this page was not opened through a lab condition');
  const result = await measure(network);
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
