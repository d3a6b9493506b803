// Unit checks of web/ladder.js in Node, with test-double transports on a
// manual clock (lib/clock.mjs): the fallback race (unit-race.mjs), the
// client around it (remembered winner, re-probe, reconnect), backoff
// bounds, and the one-cursor dedupe across drops and epoch changes. No
// browser, no server, no real timers.

import { Ladder, backoffDelay, hexToBytes } from '../../web/ladder.js';
import { Cursor } from '../../web/ladder/cursor.js';
import { ConnectionWatch } from '../../web/ladder/transports/poll.js';
import { INFO, ManualClock, fakeFetch, fakeRung, memoryStorage } from './lib/clock.mjs';
import { runRaceUnit } from './unit-race.mjs';
import { runSharedUnit } from './unit-shared.mjs';
import { runStallsUnit } from './unit-stalls.mjs';
import { runSilentUnit } from './unit-silent.mjs';

const ORIGIN_KEY = 'ladder.rung:http://127.0.0.1:9';

/** Records every `event` the ladder emits. */
function record(ladder, event) {
  const seen = [];
  ladder.on(event, (d) => seen.push(d));
  return seen;
}

const BASE = { base: 'http://127.0.0.1:9', raceDelayMs: 100, staggerMs: 50, probeTimeoutMs: 2000, reprobeMs: 0, backoffBaseMs: 10, backoffCapMs: 40 };

/** A Ladder on a manual clock whose rungs follow `plans` (see fakeRung). */
function ladderWith(plans, extra = {}) {
  const clock = new ManualClock();
  const log = [];
  const impls = Object.fromEntries(Object.entries(plans).map(([n, p]) => [n, fakeRung(n, clock, p, log)]));
  const ladder = new Ladder({ ...BASE, fetch: fakeFetch(), clock, impls, ...extra });
  return { clock, log, ladder, rung: (n) => log.find((t) => t.name === n) };
}

export async function runUnit(tally) {
  await tally.check('unit: a poll loop counts an answer on a connection opened since its previous answer, not the pool\'s older ones', () => {
    const w = new ConnectionWatch();
    const at = (server, number, accepted) => w.answered(`server=${server}; number=${number}; accepted=${accepted}`);
    const seen = [
      at('a1', 3, 4), // the first answer: nothing to compare with
      at('a1', 3, 6), // the same connection
      at('a1', 2, 7), // an older connection from the browser's pool
      at('a1', 8, 9), // opened after the previous answer (accepted 7): replaced
      at('a1', 8, 9),
      at('b2', 1, 5), // another node behind a load balancer: first word from it
      at('b2', 1, 5),
      at('a1', 10, 12), // back on the first node, on one newer than its last answer there (9)
    ];
    tally.expect(JSON.stringify(seen) === JSON.stringify([false, false, false, true, false, true, false, true]), `counted ${JSON.stringify(seen)}`);
    tally.expect(w.answered(null) === false && w.answered('junk') === false, 'an answer without the header (HTTP/3) counts nothing');
  });
  await tally.check('unit: backoff is full jitter, exponential, capped', () => {
    for (let a = 0; a < 12; a++) {
      const hi = backoffDelay(a, 500, 8000, () => 0.999999);
      const lo = backoffDelay(a, 500, 8000, () => 0);
      tally.expect(lo === 0, `attempt ${a}: lowest ${lo}`);
      tally.expect(hi < Math.min(8000, 500 * 2 ** a) && hi >= Math.min(8000, 500 * 2 ** a) - 1, `attempt ${a}: highest ${hi}`);
    }
  });

  await tally.check('unit: certificate hash hex decodes to 32 bytes', () => {
    const b = hexToBytes('00ff10'.padEnd(64, '0'));
    tally.expect(b.length === 32 && b[0] === 0 && b[1] === 255 && b[2] === 16, `got ${Array.from(b.slice(0, 3))}`);
  });

  await runRaceUnit(tally);
  await runSharedUnit(tally);
  await runStallsUnit(tally);
  await runSilentUnit(tally);

  await tally.check('unit: Ladder: WebTransport not ready in the window -> WebSocket wins, is remembered', async () => {
    globalThis.localStorage = memoryStorage();
    const { clock, ladder, rung } = ladderWith({
      webtransport: { opensIn: 5000 }, websocket: { opensIn: 20 }, sse: { opensIn: 70 }, longpoll: { opensIn: 5 }, poll: {},
    });
    const reports = record(ladder, 'report');
    const connected = ladder.connect();
    await clock.advanceTo(120);
    await connected;
    const r = ladder.report;
    ladder.close();
    tally.expect(ladder.transport === 'websocket' && r.elapsedMs === 120, `won ${ladder.transport} in ${r.elapsedMs} ms: ${JSON.stringify(r)}`);
    tally.expect(reports.length === 1 && reports[0] === r, `${reports.length} reports emitted`);
    tally.expect(/not ready/.test(r.losers.webtransport) && rung('webtransport').closed, `webtransport: ${r.losers.webtransport}`);
    tally.expect(JSON.parse(globalThis.localStorage.getItem(ORIGIN_KEY)).rung === 'websocket', 'winner not remembered');
    return r.reason;
  });

  await tally.check('unit: Ladder: remembered winner goes first, better rung re-probed and upgraded to', async () => {
    globalThis.localStorage = memoryStorage();
    globalThis.localStorage.setItem(ORIGIN_KEY, JSON.stringify({ rung: 'sse' }));
    const { clock, log, ladder } = ladderWith(
      { webtransport: { opensIn: 10 }, websocket: { opensIn: 10 }, sse: { opensIn: 10 } },
      { reprobeMs: 50 },
    );
    const upgrades = record(ladder, 'upgrade');
    const connected = ladder.connect();
    await clock.advanceTo(10);
    await connected;
    const first = ladder.transport;
    const reason = ladder.report.reason;
    const startedFirst = log.map((t) => t.name).join();
    const sub = ladder.subscribe('c', { since: 7, epoch: 'e1' }, () => {});
    await clock.advanceTo(10 + 50 + 10); // the re-probe fires at +50 and WebTransport opens in 10
    const cursorOnNew = ladder._transport.subscribed.at(-1);
    ladder.close();
    tally.expect(first === 'sse' && startedFirst === 'sse' && /remembered/.test(reason), `first ${first} of ${startedFirst} (${reason})`);
    tally.expect(upgrades.length === 1 && upgrades[0].to === 'webtransport' && ladder.transport === 'webtransport', `upgrades ${JSON.stringify(upgrades)}`);
    tally.expect(cursorOnNew.offset === 7 && cursorOnNew.epoch === 'e1', `resubscribed with ${JSON.stringify(cursorOnNew)}`);
    tally.expect(sub.cursor.offset === 7, 'cursor moved');
  });

  await tally.check('unit: Ladder: a publish retried after a 503 and a network error keeps one idempotency key', async () => {
    const clock = new ManualClock();
    const keys = [];
    const answers = [
      { ok: false, status: 503, json: async () => ({ error: { code: 'unavailable', message: 'redis unreachable' } }) },
      'network error',
      { ok: true, status: 201, json: async () => ({ channel: 'c', epoch: 'e', offset: 7 }) },
    ];
    const fetch = async (_url, init) => {
      keys.push(init.headers['idempotency-key']);
      const a = answers[keys.length - 1];
      if (typeof a === 'string') throw new TypeError(a);
      return a;
    };
    const ladder = new Ladder({ ...BASE, fetch, clock });
    const acked = ladder.publish('c', { x: 1 });
    await clock.advance(1000); // two backoffs of at most 10 and 20 ms
    const ack = await acked;
    tally.expect(ack.offset === 7, `ack ${JSON.stringify(ack)}`);
    tally.expect(keys.length === 3 && /^[0-9a-f]{32}$/.test(keys[0]) && keys.every((k) => k === keys[0]), `keys ${keys}`);
  });

  await tally.check('unit: Ladder: a refused publish is not retried', async () => {
    const clock = new ManualClock();
    let calls = 0;
    const fetch = async () => {
      calls++;
      return { ok: false, status: 403, json: async () => ({ error: { code: 'forbidden', message: 'not yours' } }) };
    };
    const ladder = new Ladder({ ...BASE, fetch, clock });
    const failed = ladder.publish('c', 1, { idempotencyKey: 'mine' }).then(() => null, (e) => e);
    await clock.advance(1000);
    const e = await failed;
    tally.expect(e && e.code === 'forbidden' && calls === 1, `${e} after ${calls} calls`);
  });

  await tally.check('unit: Ladder: a failed race is reported and retried with backoff', async () => {
    globalThis.localStorage = memoryStorage();
    // The jitter is fixed at half the window: a 0 ms draw would retry (and
    // overwrite the failure's report) before the report is read.
    const realRandom = Math.random;
    Math.random = () => 0.5;
    try {
      let attempts = 0;
      const { clock, ladder } = ladderWith({ websocket: { failsIn: 5, error: 'refused' } }, { transports: ['websocket'] });
      ladder.options.impls.websocket = class extends ladder.options.impls.websocket {
        open() { attempts++; return attempts === 1 ? super.open() : Promise.resolve(); }
      };
      const states = record(ladder, 'state');
      const connected = ladder.connect();
      await clock.advanceTo(5);
      tally.expect(/every rung failed \(websocket: failed after 5 ms: refused\)/.test(ladder.report.reason), ladder.report.reason);
      const retry = states.find((s) => s.state === 'reconnecting');
      tally.expect(retry && retry.retryInMs >= 0 && retry.retryInMs < BASE.backoffBaseMs, `state ${JSON.stringify(retry)}`);
      await clock.advance(BASE.backoffBaseMs);
      await connected;
      ladder.close();
      tally.expect(attempts === 2 && ladder.stats.connects === 1, `attempts ${attempts}, connects ${ladder.stats.connects}`);
    } finally {
      Math.random = realRandom;
    }
  });

  await tally.check('unit: one cursor: no repeat, no gap across a drop; truncated takes the new epoch', async () => {
    globalThis.localStorage = memoryStorage();
    const { clock, log, ladder } = ladderWith({ websocket: { opensIn: 1 } }, { force: 'websocket' });
    const connected = ladder.connect();
    await clock.advance(1);
    await connected;
    const got = [];
    const truncs = [];
    const sub = ladder.subscribe('c', { since: 0, onTruncated: (t) => truncs.push(t) }, (m) => got.push(m.offset));
    const msg = (offset) => ({ op: 'message', channel: 'c', offset, data: offset, ts: Date.now() });
    ladder._subscribed('c', 'e1', 0);
    for (const o of [1, 2, 3]) ladder._message(msg(o));
    const opens = record(ladder, 'open');
    ladder.drop();
    await clock.advance(BASE.backoffCapMs + 1); // the jittered backoff, then the 1 ms handshake
    tally.expect(opens.length === 1, `reopened ${opens.length} times`);
    const resumedWith = ladder._transport.subscribed.at(-1);
    for (const o of [2, 3, 4, 5]) ladder._message(msg(o)); // the server replays 2..3 again
    ladder._truncated('c', 1, 'e2'); // the channel restarted
    for (const o of [1, 2]) ladder._message(msg(o));
    ladder.close();
    tally.expect(resumedWith.offset === 3 && resumedWith.epoch === 'e1', `resumed with ${JSON.stringify(resumedWith)}`);
    tally.expect(JSON.stringify(got) === '[1,2,3,4,5,1,2]', `delivered ${JSON.stringify(got)}`);
    tally.expect(sub.stats.duplicatesDropped === 2 && sub.stats.gaps === 0, JSON.stringify(sub.stats));
    tally.expect(truncs.length === 1 && sub.cursor.epoch === 'e2' && sub.cursor.offset === 2, `cursor ${JSON.stringify(sub.cursor)}`);
    tally.expect(ladder.stats.reconnects === 1 && log.length === 2, `reconnects ${ladder.stats.reconnects}, transports ${log.length}`);
  });

  await tally.check('unit: datagram cursor drops repeats, counts reordering, keeps the highest offset', () => {
    const c = new Cursor({ offset: 10, unordered: true });
    const seen = [12, 11, 12, 15, 13].map((o) => c.admit(o, 'e'));
    tally.expect(seen.map((v) => (v.deliver ? (v.outOfOrder ? 'late' : 'new') : 'dup')).join() === 'new,late,dup,new,late', JSON.stringify(seen));
    tally.expect(c.offset === 15 && c.epoch === 'e', JSON.stringify(c));
    const gap = new Cursor({ offset: 3 }).admit(6);
    tally.expect(gap.deliver && gap.missing === 2, JSON.stringify(gap));
  });

  await tally.check('unit: a forced rung the server does not offer is reported unavailable', async () => {
    const clock = new ManualClock();
    const ladder = new Ladder({ ...BASE, clock, force: 'websocket', fetch: fakeFetch({ ...INFO, transports: ['sse'] }), impls: { websocket: fakeRung('websocket', clock) } });
    let err = null;
    try { await ladder.connect(); } catch (e) { err = e; }
    ladder.close();
    tally.expect(err && /not offered/.test(err.message) && ladder.state === 'closed', `error ${err?.message}`);
    tally.expect(/not offered/.test(ladder.report?.losers.websocket), JSON.stringify(ladder.report));
  });

  delete globalThis.localStorage;
}
