// The network lab's browser scenarios: the comparison page opened through
// each `ladder --lab` condition in headless Chromium, the automatic client
// and every forced panel under the same workload.
//
//   lab-fallback     UDP blocked -> WebSocket; + no upgrade -> SSE;
//                    + buffering proxy -> long polling; 200 messages each;
//                    the page's measured row per network (nat-timeout's
//                    with every rung through an idle past the NAT)
//   lab-nat          NAT timeout T: no reconnect over 3 x T with heartbeats;
//                    without them the drops are noticed and resumed
//   lab-switch       a network switch mid-workload: WebTransport migrates,
//                    the TCP rungs reconnect, nothing lost or repeated
//   lab-round-robin  two nodes on one real redis-server, no stickiness; the
//                    page's measured round-robin row
//   lab-lossy        2 % kernel packet loss and 40 ms each way on the wire
//                    behind lossy-link's relays; every rung delivers every
//                    message; from the direct page, the lanes card's four
//                    channels on one WebSocket and on four WebTransport
//                    streams (both through lossy-link) each get every
//                    message once, stalls and co-stalls counted (inside a
//                    network namespace)
//
// Times printed (fallback, first message) are figures, not assertions; the
// only time bound asserted is the race's own stated deadline.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startServer, stopServer, openPage, waitState, ladderState } from './lib/harness.mjs';
import { startRun, waitRunDone, checkDelivery } from './lib/workload.mjs';

/**
 * Scenarios run only when named: tests/it/browser.rs runs the lab's in a
 * test of their own, and lab-lossy inside a network namespace.
 */
export const NAMED_ONLY = ['lab-fallback', 'lab-nat', 'lab-switch', 'lab-round-robin', 'lab-lossy'];

const FORCED = ['wt', 'wtdg', 'ws', 'sse', 'longpoll', 'poll'];
const ALL = [...FORCED, 'auto'];
/** Every panel whose messages are retransmitted when lost (all but WebTransport datagrams). */
const RELIABLE = ALL.filter((id) => id !== 'wtdg');
/**
 * The rungs whose connection stays open while idle, so a NAT without
 * heartbeats forgets it (the short poll's connection is never idle for long).
 */
const IDLE_HELD = ['ws', 'sse'];
/**
 * The rungs over TCP. A network switch cuts every one: WebSocket and SSE
 * fail and reconnect; a poll's GET that was cut Chromium resends on a new
 * connection by itself, and the poll rungs count the answer on a
 * connection opened since their previous one (`Ladder-Connection`).
 */
const OVER_TCP = ['ws', 'sse', 'longpoll', 'poll'];
/**
 * The fallback scenario gives each rung a 1.5 s head start over the next
 * (the page's `stagger_ms`), instead of the default 250 ms that decides a
 * near tie: which rung a network lets through must not depend on how busy
 * the machine is. The stated bound is the race's deadline: the probe
 * timeout, 8 s, plus one stagger per rung.
 */
const STAGGER_MS = 1500;
/** The rung the automatic client ends on through each condition, when it measures each network. */
const MEASURED_RUNG = {
  'udp-blocked': 'websocket',
  'no-upgrade': 'webtransport',
  'buffering-proxy': 'webtransport',
  'nat-timeout': 'webtransport',
  'network-switch': 'webtransport',
  'lossy-link': 'webtransport',
  'round-robin': 'webtransport',
  'udp-blocked+no-upgrade': 'sse',
  'udp-blocked+no-upgrade+buffering-proxy': 'longpoll',
};
const FALLBACK_BOUND_MS = 8000 + 5 * STAGGER_MS;
/** The NAT timeout of the fallback scenario's lab, whose measured nat-timeout row idles past it. */
const NAT_S = 3;

/** The text of each cell of the table row `selector`. */
const rowCells = (page, selector) => page.$$eval(`#networks ${selector} td`, (tds) => tds.map((td) => td.textContent));

async function labInfo(server) {
  const info = await (await fetch(`${server.http}/api/info`)).json();
  if (!info.lab) throw new Error(`no lab in /api/info: ${JSON.stringify(info)}`);
  return info.lab;
}

/** The page's address through condition `name` (as the Network choice links it). */
function through(lab, name, extra = {}) {
  const c = lab.conditions.find((x) => x.name === name);
  if (!c) throw new Error(`condition ${name} not offered: ${JSON.stringify(lab.unavailable)}`);
  const q = new URLSearchParams({ network: c.name, wt_url: c.webtransport, direct: lab.direct, ...extra });
  return `${c.http}/?${q}`;
}

async function openThrough(browser, lab, name, extra = {}) {
  const opened = await openPage(browser, through(lab, name, extra));
  await waitState(opened.page, 'the page ready', () => window.ladderState?.ready === true, null, 15000);
  await opened.page.fill('#poll-interval', '200');
  await opened.page.dispatchEvent('#poll-interval', 'change');
  return opened;
}

function waitOpen(page, ids, timeoutMs = 30000) {
  return waitState(page, `panels ${ids.join(', ')} open`,
    (want) => want.every((id) => window.ladderState.panels[id]?.state === 'open'), ids, timeoutMs);
}

const reconnects = (st, ids) => Object.fromEntries(ids.map((id) => [id, st.panels[id].reconnects]));
const openIds = (st) => ALL.filter((id) => st.panels[id].state === 'open');

export function labScenarios(tally) {
  async function fallback(browser) {
    // nat-timeout's row idles longer than the NAT forgets: a short NAT
    // (the heartbeat and QUIC keep-alive shorter still) keeps that brief.
    const server = await startServer(['--lab', '--heartbeat', '1', '--wt-keep-alive', '1', '--lab-nat-timeout', String(NAT_S)]);
    try {
      const lab = await labInfo(server);
      const cases = [
        ['udp-blocked', 'websocket'],
        ['udp-blocked+no-upgrade', 'sse'],
        ['udp-blocked+no-upgrade+buffering-proxy', 'longpoll'],
      ];
      if (!lab.conditions.some((c) => c.name === 'lossy-link')) {
        await tally.check('lab: without lossy-link there is no wire to count (GET /api/lab/wire answers 404)', async () => {
          const res = await fetch(`${lab.direct}/api/lab/wire`);
          const body = await res.json();
          tally.expect(res.status === 404 && body.error?.code === 'not_found', `GET /api/lab/wire: ${res.status} ${JSON.stringify(body)}`);
          return body.error?.message;
        });
      }
      for (const [name, expected] of cases) {
        const { context, page } = await openThrough(browser, lab, name, { stagger_ms: STAGGER_MS });
        try {
          if (name === cases[0][0]) {
            await tally.check('lab: the lanes card compares through lossy-link where the lab offers it, and otherwise says why not', async () => {
              const note = await page.textContent('#multi-note');
              const offered = lab.conditions.some((c) => c.name === 'lossy-link');
              const want = offered ? 'Compared through the lab\'s lossy-link' : 'lossy-link is not offered';
              tally.expect(await page.isVisible('#multi-note') && note.includes(want), `note: "${note}"`);
              tally.expect((await ladderState(page)).multi.compare === offered, `the lanes card compares only over a lossy link (offered: ${offered})`);
              return note;
            });
          }
          await tally.check(`lab ${name}: automatic client ends on ${expected} within its bound`, async () => {
            const st = await waitState(page, `auto open on ${expected}`,
              () => (window.ladderState.panels.auto?.state === 'open' ? JSON.parse(JSON.stringify(window.ladderState.panels.auto)) : null),
              null, FALLBACK_BOUND_MS + 10000);
            tally.expect(st.transport === expected, `ended on ${st.transport}; report ${JSON.stringify(st.report)}`);
            tally.expect(st.report.elapsedMs <= FALLBACK_BOUND_MS, `fell back after ${st.report.elapsedMs} ms (bound ${FALLBACK_BOUND_MS})`);
            return `fell back in ${st.report.elapsedMs} ms; ${Object.entries(st.report.losers).map(([k, v]) => `${k}: ${v}`).join(' | ')}`;
          });
          await tally.check(`lab ${name}: 200 messages arrive exactly once, in order`, async () => {
            await startRun(page, { k: 200, rate: 200 });
            const st = await waitRunDone(page, 60000);
            const ids = openIds(st);
            tally.expect(ids.includes('auto'), 'the automatic client is not open');
            checkDelivery(st, ids, 200);
            const a = st.panels.auto;
            return `first message ${a.firstMessageAt - st.run.publishingAt} ms after publishing began (${a.firstMessageAt} ms after page load), auto p50 ${a.p50} ms p99 ${a.p99} ms; panels ${ids.join(', ')}`;
          });
        } finally {
          await context.close().catch(() => {});
        }
      }
      await measuredRows(browser, lab);
    } finally {
      await stopServer(server);
    }
  }

  /**
   * The comparison's "through each network" table: one automatic client per
   * condition (a frame through it), each row filled with what it measured.
   * Asserts the rung and the accounting, and under nat-timeout every rung
   * forced through an idle longer than the NAT's timeout: the heartbeats
   * kept each one alive (0 reconnects from the idle on), nothing lost or
   * repeated. Prints the whole table. `names` limits the conditions
   * measured (the page's `networks=`).
   */
  async function measuredRows(browser, lab, names = lab.conditions.map((c) => c.name)) {
    const { context, page } = await openPage(browser, `${lab.direct}/?stagger_ms=${STAGGER_MS}&networks=${encodeURIComponent(names.join(','))}`);
    try {
      let st = null;
      await tally.check(`lab: the table's measured row per network (${names.join(', ')}): expected rung, 0 lost, 0 duplicated`, async () => {
        await waitState(page, 'the page ready', () => window.ladderState?.ready === true, null, 15000);
        await page.click('#networks-run');
        st = await waitState(page, 'every network measured',
          () => (window.ladderState.networks.state === 'done' ? JSON.parse(JSON.stringify(window.ladderState.networks)) : null),
          null, names.length * 100000);
        const lines = [];
        for (const name of names) {
          const r = st.rows[name];
          const want = MEASURED_RUNG[name];
          tally.expect(r && !r.error, `${name}: ${JSON.stringify(r)}`);
          if (!r || r.error) continue;
          tally.expect(!want || r.transport === want, `${name}: ended on ${r.transport}, expected ${want}`);
          tally.expect(r.lost === 0 && r.duplicated === 0 && r.outOfOrder === 0 && r.works, `${name}: ${JSON.stringify(r)}`);
          const cells = await rowCells(page, `tr[data-condition="${name}"]`);
          tally.expect(cells[0] === 'Yes' && cells[4] === '0' && cells[5] === '0' && cells[3] === String(r.reconnects), `${name}: row shows ${JSON.stringify(cells)}`);
          tally.expect(r.firstChoice ? cells[1].startsWith('WebTransport, ready in') : cells[1].startsWith(`Falls back to ${r.transport} after`), `${name}: rung cell ${cells[1]}`);
          lines.push(`| ${name} | ${cells.join(' | ')} |`);
          for (const rung of Object.keys(r.rungs || {})) {
            lines.push(`| … ${rung} | ${(await rowCells(page, `tr[data-under="${name}"][data-rung="${rung}"]`)).join(' | ')} |`);
          }
        }
        return `\n| Network | Works | Rung (automatic client) | Latency p50 / p99 | Reconnects | Lost | Duplicated |\n|---|---|---|---|---|---|---|\n${lines.join('\n')}`;
      });
      const nat = st?.rows['nat-timeout'];
      if (names.includes('nat-timeout') && nat && !nat.error) {
        await tally.check(`lab: the nat-timeout row idles past the NAT's ${NAT_S} s with every rung forced beside the automatic client; heartbeats (1 s) keep each alive: 0 reconnects, 0 lost, 0 duplicated`, async () => {
          tally.expect(nat.natTimeoutMs === NAT_S * 1000 && nat.idleMs > nat.natTimeoutMs, `idle ${nat.idleMs} ms against a NAT of ${nat.natTimeoutMs} ms`);
          const info = await (await fetch(`${lab.direct}/api/info`)).json();
          const rungs = Object.keys(nat.rungs);
          tally.expect(JSON.stringify([...rungs].sort()) === JSON.stringify([...info.transports].sort()), `rungs measured: ${rungs.join(', ')}; offered: ${info.transports.join(', ')}`);
          for (const [rung, x] of Object.entries(nat.rungs)) {
            tally.expect(x.transport === rung, `${rung}: forced client on ${x.transport}`);
            tally.expect(x.lost === 0 && x.duplicated === 0 && x.outOfOrder === 0, `${rung}: ${JSON.stringify(x)}`);
            tally.expect(x.reconnects === 0, `${rung}: ${x.reconnects} reconnects through the idle with heartbeats on`);
            const cells = await rowCells(page, `tr[data-under="nat-timeout"][data-rung="${rung}"]`);
            tally.expect(cells[0] === 'Yes' && cells[3] === '0' && cells[4] === '0' && cells[5] === '0', `${rung}: row shows ${JSON.stringify(cells)}`);
          }
          return `idle ${nat.idleMs} ms against ${nat.natTimeoutMs} ms: ${rungs.map((r) => `${r} ${nat.rungs[r].reconnects} reconnects`).join(', ')}`;
        });
      }
      return st;
    } finally {
      await context.close().catch(() => {});
    }
  }

  async function nat(browser) {
    const T = 3;
    const on = await startServer(['--lab', '--heartbeat', '1', '--wt-keep-alive', '1', '--lab-nat-timeout', String(T)]);
    try {
      const { context, page } = await openThrough(browser, await labInfo(on), 'nat-timeout');
      try {
        await tally.check(`lab nat-timeout ${T} s, heartbeats every 1 s: no reconnect over 3 x T`, async () => {
          await waitOpen(page, ALL);
          const before = reconnects(await ladderState(page), ALL);
          // The observation window the condition is defined by, not a pass hope.
          await page.waitForTimeout(3 * T * 1000);
          const st = await ladderState(page);
          const moved = ALL.filter((id) => st.panels[id].reconnects !== before[id] || st.panels[id].state !== 'open');
          tally.expect(moved.length === 0, `reconnected: ${moved.map((id) => `${id} ${before[id]} -> ${st.panels[id].reconnects} (${st.panels[id].reason})`).join(', ')}`);
          return `${ALL.length} panels, 0 reconnects over ${3 * T} s idle`;
        });
        await tally.check(`lab nat-timeout ${T} s, heartbeats on: 200 messages exactly once`, async () => {
          await startRun(page, { k: 200, rate: 200 });
          checkDelivery(await waitRunDone(page, 60000), ALL, 200);
        });
      } finally {
        await context.close().catch(() => {});
      }
    } finally {
      await stopServer(on);
    }

    const off = await startServer(['--lab', '--heartbeat', '0', '--wt-keep-alive', '0', '--lab-nat-timeout', String(T)]);
    try {
      const { context, page } = await openThrough(browser, await labInfo(off), 'nat-timeout');
      try {
        await tally.check(`lab nat-timeout ${T} s, heartbeats off: the idle WebSocket and SSE connections are dropped, noticed and resumed`, async () => {
          await waitOpen(page, ALL);
          await startRun(page, { k: 50, rate: 200 });
          checkDelivery(await waitRunDone(page, 60000), ALL, 50);
          const st = await waitState(page, 'a reconnect on the WebSocket and SSE panels',
            (ids) => ids.every((id) => window.ladderState.panels[id].reconnects >= 1)
              && JSON.parse(JSON.stringify(window.ladderState.panels)), IDLE_HELD, 6 * T * 1000 + 15000);
          return `reconnects: ${ALL.map((id) => `${id} ${st[id].reconnects}`).join(', ')}`;
        });
        await tally.check(`lab nat-timeout ${T} s, heartbeats off: after the drops 200 messages exactly once (datagrams: counted, not retransmitted)`, async () => {
          await waitOpen(page, IDLE_HELD);
          await startRun(page, { k: 200, rate: 200 });
          const st = await waitRunDone(page, 60000);
          checkDelivery(st, RELIABLE, 200);
          return `datagram panel: ${st.panels.wtdg.received}/200 (a mapping the NAT forgot loses datagrams until the client's next echo opens a new one)`;
        });
      } finally {
        await context.close().catch(() => {});
      }
    } finally {
      await stopServer(off);
    }
  }

  async function networkSwitch(browser) {
    const server = await startServer(['--lab', '--heartbeat', '1']);
    try {
      const { context, page } = await openThrough(browser, await labInfo(server), 'network-switch');
      try {
        await tally.check('lab network-switch mid-workload: WebTransport migrates (0 reconnects), every TCP rung reconnects (the polls: answered on a new connection), nothing lost or repeated (datagrams: loss counted)', async () => {
          await waitOpen(page, ALL);
          const start = await ladderState(page);
          tally.expect(start.panels.auto.transport === 'webtransport', `auto on ${start.panels.auto.transport}`);
          const before = reconnects(start, ALL);
          await startRun(page, { k: 200, rate: 50 });
          await waitState(page, 'every panel past 40 messages', () => ['wt', 'wtdg', 'ws', 'sse', 'longpoll', 'poll', 'auto']
            .every((id) => window.ladderState.panels[id].received >= 40), null, 20000);
          const res = await fetch(`${server.http}/api/lab/switch`, { method: 'POST' });
          tally.expect(res.ok, `switch answered ${res.status}`);
          const st = await waitRunDone(page, 60000);
          checkDelivery(st, RELIABLE, 200);
          const quic = ['wt', 'wtdg', 'auto'].filter((id) => st.panels[id].reconnects !== before[id]);
          tally.expect(quic.length === 0, `WebTransport reconnected instead of migrating: ${quic.map((id) => `${id} ${before[id]} -> ${st.panels[id].reconnects}`).join(', ')}`);
          const tcp = OVER_TCP.filter((id) => !(st.panels[id].reconnects >= before[id] + 1));
          tally.expect(tcp.length === 0, `no reconnect after the switch on ${tcp.join(', ')}`);
          return `reconnects: ${ALL.map((id) => `${id} ${st.panels[id].reconnects - before[id]}`).join(', ')}; datagrams ${st.panels.wtdg.received}/200 (not retransmitted)`;
        });
      } finally {
        await context.close().catch(() => {});
      }
    } finally {
      await stopServer(server);
    }
  }

  async function roundRobin(browser) {
    const redis = await startRedis();
    const certs = mkdtempSync(join(tmpdir(), 'ladder-rr-certs-'));
    let a = null;
    let b = null;
    try {
      // One certificate for both nodes: a WebTransport flow may land on either.
      b = await startServer(['--redis', redis.url, '--allowed-origin', '*'], { certsDir: certs });
      const bHttp = b.http.replace(/^http:\/\//, '');
      const bH3 = new URL(b.wt).host;
      a = await startServer(['--redis', redis.url, '--lab', '--heartbeat', '1', '--lab-peer-http', bHttp, '--lab-peer-h3', bH3], { certsDir: certs });
      const { context, page } = await openThrough(browser, await labInfo(a), 'round-robin');
      try {
        await tally.check('lab round-robin on one redis-server: reconnects land on either node, nothing lost or repeated', async () => {
          await waitOpen(page, ALL);
          await startRun(page, { k: 200, rate: 100 });
          for (const id of ALL) {
            await waitState(page, `${id} past 40 messages`, (pid) => window.ladderState.panels[pid].received >= 40, id, 20000);
            await page.click(`#panel-${id} [data-role=drop]`);
          }
          const st = await waitRunDone(page, 60000);
          checkDelivery(st, ALL, 200);
          const served = async (node) => {
            const t = (await (await fetch(`${node.http}/api/stats`)).json()).transports;
            return Object.fromEntries(Object.entries(t).map(([k, v]) => [k, v.connections_total]));
          };
          const [sa, sb] = [await served(a), await served(b)];
          const total = (s) => Object.values(s).reduce((x, y) => x + y, 0);
          tally.expect(total(sa) > 0 && total(sb) > 0, `one node served nothing: A ${JSON.stringify(sa)}, B ${JSON.stringify(sb)}`);
          return `connections A ${JSON.stringify(sa)}, B ${JSON.stringify(sb)}; resumed: ${ALL.map((id) => `${id} ${st.panels[id].resumeMs} ms`).join(', ')}`;
        });
      } finally {
        await context.close().catch(() => {});
      }
      // The page's own row: opened on node A directly, it measures
      // round-robin (the row is offered because A's lab has a peer). The
      // probe's client is dropped half-way; node B is reached only through
      // the balancer, so its WebTransport sessions are the probe's.
      const lab = await labInfo(a);
      tally.expect(lab.conditions.some((c) => c.name === 'round-robin'), `round-robin not offered with a peer: ${JSON.stringify(lab.unavailable)}`);
      const sessionsOnB = async () => (await (await fetch(`${b.http}/api/stats`)).json()).transports.webtransport.connections_total;
      const before = await sessionsOnB();
      const st = await measuredRows(browser, lab, ['round-robin']);
      const r = st?.rows['round-robin'];
      if (r && !r.error) {
        await tally.check('lab: the round-robin row\'s reconnect lands on the other node (sessions on both, over one redis-server)', async () => {
          const onB = (await sessionsOnB()) - before;
          tally.expect(r.reconnects >= 1, `the probe's client did not reconnect: ${JSON.stringify(r)}`);
          // 1 + reconnects sessions went through the balancer: some on B,
          // not all of them, so at least one reconnect changed node.
          tally.expect(onB >= 1 && onB <= r.reconnects, `${1 + r.reconnects} sessions through the balancer, ${onB} of them on node B`);
          return `${1 + r.reconnects} WebTransport sessions through the balancer, ${onB} on node B, the rest on A; ${r.received}/${r.k} received`;
        });
      }
    } finally {
      await stopServer(a);
      await stopServer(b);
      redis.stop();
      rmSync(certs, { recursive: true, force: true });
    }
  }

  async function lossy(browser) {
    const server = await startServer(['--lab', '--heartbeat', '1']);
    try {
      const lab = await labInfo(server);
      const { context, page } = await openThrough(browser, lab, 'lossy-link');
      try {
        await tally.check('lab lossy-link (2 % kernel loss, 40 ms each way): every rung delivers every message (datagrams: loss counted)', async () => {
          await waitOpen(page, ALL, 60000);
          await startRun(page, { k: 200, rate: 100 });
          const st = await waitRunDone(page, 120000);
          checkDelivery(st, RELIABLE, 200);
          const dg = st.panels.wtdg;
          tally.expect(dg.duplicates === 0 && dg.received <= 200, `datagram panel: ${dg.received} received, ${dg.duplicates} duplicates`);
          return `${ALL.map((id) => `${id} p50 ${st.panels[id].p50} p99 ${st.panels[id].p99} ms, ${st.panels[id].reconnects} reconnects`).join('; ')}; datagrams ${dg.received}/200 (not retransmitted)`;
        });
      } finally {
        await context.close().catch(() => {});
      }
      // The lanes from the page opened directly: both connections go to
      // lossy-link's relays, publishing straight to the server.
      const direct = await openPage(browser, `${lab.direct}/`);
      try {
        await waitState(direct.page, 'the page ready', () => window.ladderState?.ready === true, null, 15000);
        await tally.check('lab lossy-link lanes from the direct page: four channels on one WebSocket next to four streams of one WebTransport session, both through lossy-link; every message exactly once per lane; stalls and co-stalls counted and shown',
          () => lanesThroughLoss(direct.page, tally, LANES_COUNT));
        await tally.check('lab lossy-link: the kernel really dropped TCP and UDP packets on the wire (GET /api/lab/wire)', async () => {
          const res = await fetch(`${lab.direct}/api/lab/wire`);
          const w = await res.json();
          tally.expect(res.status === 200, `GET /api/lab/wire: ${res.status} ${JSON.stringify(w)}`);
          tally.expect(w.tcp_dropped > 0 && w.udp_dropped > 0, `no drops of both kinds: ${JSON.stringify(w)}`);
          tally.expect(w.overflow === 0, `the wire's delay queue dropped ${w.overflow}`);
          return `tcp ${w.tcp_dropped} of ${w.tcp} packets dropped, udp ${w.udp_dropped} of ${w.udp}, queue overflow ${w.overflow}`;
        });
      } finally {
        await direct.context.close().catch(() => {});
      }
    } finally {
      await stopServer(server);
    }
  }

  return {
    'lab-fallback': fallback,
    'lab-nat': nat,
    'lab-switch': networkSwitch,
    'lab-round-robin': roundRobin,
    'lab-lossy': lossy,
  };
}

const LANE_GROUPS = ['webtransport', 'websocket'];
/** Messages per lane (LADDER_LANES_COUNT raises it for a measurement; CI keeps 200). */
const LANES_COUNT = Number(process.env.LADDER_LANES_COUNT) || 200;

/**
 * Runs the page's lanes comparison for `count` messages per lane and checks
 * delivery and accounting, never timing: each lane of each connection got
 * offsets 1..count once, and each connection's co-stall counter is
 * computed (a mean of 1..4 lanes when there were stalls) and shown as
 * computed. Returns the counters as printed figures.
 */
async function lanesThroughLoss(page, tally, count) {
  const before = await ladderState(page);
  tally.expect(before.multi.compare === true, `the lanes card is not in comparison mode: ${JSON.stringify(before.multi)}`);
  await page.evaluate((n) => { window.ladderApp.startMulti({ count: n }); }, count);
  const m = await waitState(page, 'the lanes run to end',
    () => (['done', 'stopped', 'unavailable'].includes(window.ladderState.multi.state) ? JSON.parse(JSON.stringify(window.ladderState.multi)) : null),
    null, 120000);
  tally.expect(m.state === 'done', `lanes ended ${m.state}: ${JSON.stringify(m.groups)}`);
  tally.expect(m.publishErrors === 0 && m.published === count, `published ${m.published}/${count}, ${m.publishErrors} errors`);
  const figures = [];
  for (const name of LANE_GROUPS) {
    const g = m.groups[name];
    tally.expect(g?.state === 'open', `${name}: ${g?.state} ${g?.reason || ''}`);
    if (!g) continue;
    const bad = ['a', 'b', 'c', 'd'].filter((l) => {
      const ls = g.lanes[l];
      return !ls || ls.published !== count || ls.received !== count || ls.missing !== 0 || ls.duplicates !== 0 || ls.outOfOrder !== 0;
    });
    tally.expect(bad.length === 0, `${name} lanes ${bad.map((l) => `${l} ${JSON.stringify(g.lanes[l])}`).join('; ')}`);
    const c = g.coStall;
    const laneStalls = Object.values(g.lanes).reduce((a, ls) => a + ls.stalls, 0);
    tally.expect(Number.isInteger(c.stalls) && c.stalls === laneStalls, `${name}: counter ${c.stalls} stalls, lanes ${laneStalls}`);
    tally.expect(c.stalls === 0 ? c.coStallMean === null : c.coStallMean >= 1 && c.coStallMean <= 4 && c.coStallMax <= 4,
      `${name}: co-stall ${JSON.stringify(c)}`);
    const shown = await page.textContent(`.lane-group[data-group="${name}"] [data-role=co-stall]`);
    const expected = c.stalls === 0 ? 'Stalls: 0.' : `Stalls: ${c.stalls}; co-stall mean ${c.coStallMean.toFixed(2)} of 4 lanes, max ${c.coStallMax}`;
    tally.expect(shown.startsWith(expected), `${name}: the page shows "${shown}", computed ${JSON.stringify(c)}`);
    const traces = await page.$$eval(`.lane-group[data-group="${name}"] [data-role=spark] polyline`, (ls) => ls.length);
    tally.expect(traces === 4, `${name}: ${traces} latency traces drawn`);
    figures.push(`${name} ${c.stalls} stalls, co-stall mean ${c.coStallMean === null ? '–' : c.coStallMean.toFixed(2)} max ${c.coStallMax ?? '–'}, lane p99 ${Object.values(g.lanes).map((ls) => ls.p99).join('/')} ms`);
  }
  // LADDER_LANES_SCREENSHOT=path keeps a picture of the card (for the README).
  if (process.env.LADDER_LANES_SCREENSHOT) await (await page.$('#multi')).screenshot({ path: process.env.LADDER_LANES_SCREENSHOT });
  return `${count} messages per lane at ${m.rate}/s: ${figures.join('; ')}`;
}

/**
 * A throwaway redis-server on a free port, no persistence. The port is
 * found free and then handed to redis-server, so another process (a
 * parallel test's client socket) can take it in between: a start that
 * fails for that reason alone is tried again on another port, five
 * times at most.
 */
async function startRedis() {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startRedisOnce();
    } catch (e) {
      if (attempt >= 5 || !String(e.message).includes('Address already in use')) throw e;
    }
  }
}

async function startRedisOnce() {
  const port = await new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: ['ignore', 'pipe', 'pipe'] });
  await new Promise((resolve, reject) => {
    // A bound on a hang, not a performance figure: generous for a loaded machine.
    const timer = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error('redis-server did not start within 30 s')); }, 30000);
    let out = '';
    proc.stdout.on('data', (c) => {
      out += c;
      if (out.includes('Ready to accept connections')) { clearTimeout(timer); resolve(); }
    });
    proc.once('exit', (code) => { clearTimeout(timer); reject(new Error(`redis-server exited (${code}): ${out}`)); });
  });
  return { url: `redis://127.0.0.1:${port}`, stop: () => proc.kill('SIGTERM') };
}
