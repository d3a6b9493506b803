// Reads a ladder-bench / compare.sh output file and prints the comparison
// table of issue 5 with ratios (Ladder ÷ peer). Usage: node summarize.js FILE
'use strict';
const fs = require('node:fs');

const lines = fs.readFileSync(process.argv[2], 'utf8').split('\n');
const runs = lines.filter((l) => l.startsWith('JSON ')).map((l) => JSON.parse(l.slice(5)));
const wrk = {};
for (const l of lines) {
  const m = l.match(/^WRK (\S+) (\S+) ([\d.]+)/);
  if (m) wrk[`${m[1]} ${m[2]}`] = Number(m[3]);
}
const get = (peer, label) => runs.find((r) => r.peer === peer && r.label === label) || {};
const n = (x, d = 2) => (typeof x === 'number' && isFinite(x) ? x.toFixed(d) : '-');
const mib = (k) => (typeof k === 'number' ? (k / 1024).toFixed(0) : '-');

const rows = {};
for (const peer of ['ladder', 'ws', 'socketio']) {
  const sat = get(peer, 'saturation');
  const mid = get(peer, '50k');
  const idle = get(peer, 'idle');
  rows[peer] = {
    idle: idle.kib_per_conn,
    sat_us: sat.server_cpu_us_per_delivery,
    sat_dps: sat.deliveries_per_s,
    sat_lag: sat.lagged,
    sat_lost: sat.lost,
    mid_us: mid.server_cpu_us_per_delivery,
    mid_p99: mid.latency_ms && mid.latency_ms.p99,
    rss: `${mib(sat.rss_kib_before)} → ${mib(sat.rss_kib_after)} (peak ${mib(sat.rss_kib_peak)}) MiB`,
    rss_ratio: sat.rss_kib_peak / sat.rss_kib_before,
  };
}
console.log('\n| peer | idle KiB/conn | server µs/delivery at saturation | deliveries/s at saturation (lagged subs, undelivered) | server µs/delivery at 50k/s | p99 ms at 50k/s | RSS idle → saturated |');
console.log('|---|---|---|---|---|---|---|');
for (const [peer, r] of Object.entries(rows)) {
  console.log(`| ${peer} | ${n(r.idle, 1)} | ${n(r.sat_us)} | ${n(r.sat_dps, 0)} (${r.sat_lag ?? '-'}, ${r.sat_lost ?? '-'}) | ${n(r.mid_us)} | ${n(r.mid_p99)} | ${r.rss} |`);
}
const L = rows.ladder;
console.log('\nRatios, Ladder ÷ peer (lower is better):');
for (const peer of ['ws', 'socketio']) {
  const P = rows[peer];
  console.log(`  vs ${peer}: CPU/delivery at saturation ${n(L.sat_us / P.sat_us)}, at 50k/s ${n(L.mid_us / P.mid_us)}, p99 at 50k/s ${n(L.mid_p99 / P.mid_p99)}, idle KiB/conn ${n(L.idle / P.idle)}`);
}
console.log(`  Ladder RSS peak ÷ idle at saturation: ${n(L.rss_ratio)}`);
const wt = get('ladder', '50k-wt');
if (wt.server_cpu_us_per_delivery) {
  console.log(`  Ladder WebTransport ÷ WebSocket, CPU/delivery at 50k/s: ${n(wt.server_cpu_us_per_delivery / L.mid_us)} (${n(wt.server_cpu_us_per_delivery)} µs, lost ${wt.lost ?? '-'})`);
}
const tcpFloor = runs.find((r) => r.kind === 'floor') || {};
const quicFloor = runs.find((r) => r.kind === 'quic-floor') || {};
const tf = tcpFloor.server_cpu_us_per_delivery;
const qf = quicFloor.server_cpu_us_per_delivery;
if (tf && qf) {
  console.log('\nFloors of the 50k/s load (one write per delivery), server µs/delivery:');
  console.log(`  TCP send(): ${n(tf)}; Ladder WebSocket ÷ it: ${n(L.mid_us / tf)}`);
  console.log(`  raw quinn: ${n(qf)} (${quicFloor.short_streams ?? '-'} streams short); Ladder WebTransport ÷ it: ${n(wt.server_cpu_us_per_delivery / qf)}`);
  console.log(`  raw quinn ÷ Ladder WebSocket: ${n(qf / L.mid_us)} (the part of WebTransport ÷ WebSocket that is quinn's own)`);
}
const node = wrk['http node'];
if (node) {
  console.log('\nEmpty requests/s (wrk -t1 -c64, server on one core), ratio to node:http:');
  for (const [k, v] of Object.entries(wrk)) console.log(`  ${k}: ${n(v, 0)} req/s (${n(v / node)}×)`);
}
