// Unit checks of the fallback race (web/ladder/race.js) on a manual clock:
// time moves only when a check says so, the rungs are test doubles that
// open or fail at planned instants, so every figure below is exact.

import { Race, raceOrder } from '../../web/ladder/race.js';
import { ManualClock, fakeRung } from './lib/clock.mjs';

const ORDER = ['webtransport', 'websocket', 'sse', 'longpoll', 'poll'];
const TIMING = { raceDelayMs: 1000, staggerMs: 250, probeTimeoutMs: 8000 };

/** A race over `order` whose rungs follow `plans`; `outcome` settles with it. */
function setup(plans, { order = ORDER, remembered = null } = {}) {
  const clock = new ManualClock();
  const log = [];
  const classes = Object.fromEntries(order.map((n) => [n, fakeRung(n, clock, plans[n] || {}, log)]));
  const race = new Race({ order, make: (n) => new classes[n](null), clock, remembered, ...TIMING });
  const outcome = { value: null, error: null, settledAt: null };
  race.run().then(
    (v) => { outcome.value = v; outcome.settledAt = clock.now(); },
    (e) => { outcome.error = e; outcome.settledAt = clock.now(); },
  );
  const rung = (n) => log.find((t) => t.name === n);
  return { clock, log, race, outcome, rung };
}

export async function runRaceUnit(tally) {
  await tally.check('unit race: WebTransport ready within the window wins alone', async () => {
    const { clock, log, race, outcome } = setup({ webtransport: { opensIn: 300 }, websocket: { opensIn: 1 } });
    await clock.advanceTo(299);
    tally.expect(outcome.settledAt === null && log.length === 1, `settled ${outcome.settledAt}, started ${log.length}`);
    await clock.advanceTo(300);
    tally.expect(outcome.value?.winner.name === 'webtransport' && outcome.settledAt === 300, `won ${outcome.value?.winner.name} at ${outcome.settledAt}`);
    await clock.advanceTo(20000);
    const r = race.report;
    tally.expect(log.length === 1, `started ${log.map((t) => t.name)} (only WebTransport should have)`);
    tally.expect(clock.pending === 0, `${clock.pending} timers left behind`);
    tally.expect(r.elapsedMs === 300 && /^first choice, ready in 300 ms$/.test(r.reason), `${r.elapsedMs}: ${r.reason}`);
    tally.expect(ORDER.slice(1).every((n) => /not tried: webtransport/.test(r.losers[n])), JSON.stringify(r.losers));
    return r.reason;
  });

  await tally.check('unit race: WebTransport late -> the race starts at raceDelayMs, staggered', async () => {
    const { clock, log, outcome, rung } = setup({ webtransport: { opensIn: 5000 }, websocket: { opensIn: 600 }, sse: { opensIn: 600 } });
    await clock.advanceTo(999);
    tally.expect(log.length === 1, `before the window: started ${log.map((t) => t.name)}`);
    await clock.advanceTo(1000);
    tally.expect(log.length === 2 && rung('websocket').startedAt === 1000, `at 1000: ${log.map((t) => `${t.name}@${t.startedAt}`)}`);
    await clock.advanceTo(1250);
    tally.expect(rung('sse')?.startedAt === 1250, `sse started at ${rung('sse')?.startedAt}`);
    await clock.advanceTo(1600);
    tally.expect(outcome.value?.winner.name === 'websocket' && outcome.settledAt === 1600, `won ${outcome.value?.winner.name} at ${outcome.settledAt}`);
    const r = outcome.value.report;
    tally.expect(rung('webtransport').closed, 'the late WebTransport attempt was not closed');
    tally.expect(r.losers.webtransport === 'not ready after 1600 ms, when websocket was', r.losers.webtransport);
    tally.expect(rung('longpoll').startedAt === 1500 && r.reason === 'first ready, in 1600 ms', `${rung('longpoll').startedAt}: ${r.reason}`);
    return r.reason;
  });

  await tally.check('unit race: first ready rung wins, every other one is closed (a late ready one too)', async () => {
    const { clock, log, outcome, rung } = setup({
      webtransport: {}, websocket: { opensIn: 400, lingers: true }, sse: { opensIn: 100 }, longpoll: {},
    });
    await clock.advanceTo(1350);
    tally.expect(outcome.value?.winner.name === 'sse', `won ${outcome.value?.winner.name} at ${outcome.settledAt}`);
    tally.expect(['webtransport', 'websocket'].every((n) => rung(n).closed) && !rung('sse').closed, log.map((t) => `${t.name}:${t.closed}`).join(' '));
    tally.expect(!rung('longpoll') && !rung('poll'), `started after the win: ${log.map((t) => t.name)}`);
    await clock.advanceTo(1400); // websocket's handshake completes after all
    const r = outcome.value.report;
    tally.expect(rung('websocket').closes === 2, `late ready websocket closed ${rung('websocket').closes} times`);
    tally.expect(r.losers.websocket === 'ready after 1400 ms, later than sse', r.losers.websocket);
    tally.expect(r.losers.longpoll === 'not tried: sse was ready first', r.losers.longpoll);
    tally.expect(clock.pending === 0, `${clock.pending} timers left behind`);
  });

  await tally.check('unit race: a rung failing early does not end the race', async () => {
    // WebTransport refused at once: the next rung starts then, not at raceDelayMs.
    const a = setup({ webtransport: { failsIn: 40, error: 'handshake failed' }, websocket: { opensIn: 30 } });
    await a.clock.advanceTo(70);
    tally.expect(a.outcome.value?.winner.name === 'websocket' && a.rung('websocket').startedAt === 40, `won ${a.outcome.value?.winner.name} at ${a.outcome.settledAt}`);
    tally.expect(a.race.report.losers.webtransport === 'failed after 40 ms: handshake failed', a.race.report.losers.webtransport);
    // A rung failing while another is still in flight: the race goes on.
    const b = setup({ webtransport: { opensIn: 5000 }, websocket: { failsIn: 10 }, sse: { opensIn: 50 } });
    await b.clock.advanceTo(1010);
    tally.expect(b.outcome.settledAt === null && /failed after 1010 ms/.test(b.race.report.losers.websocket), `settled at ${b.outcome.settledAt}: ${b.race.report.losers.websocket}`);
    await b.clock.advanceTo(1300);
    tally.expect(b.outcome.value?.winner.name === 'sse' && b.outcome.settledAt === 1300, `won ${b.outcome.value?.winner.name} at ${b.outcome.settledAt}`);
  });

  await tally.check('unit race: every rung failing -> one clear error, at once', async () => {
    const plans = Object.fromEntries(ORDER.map((n, i) => [n, { failsIn: 10 * (i + 1), error: `${n} refused` }]));
    const { clock, race, outcome } = setup(plans);
    await clock.advanceTo(race.deadlineMs);
    const e = outcome.error;
    tally.expect(e && /^every rung failed \(webtransport: failed after 10 ms: webtransport refused; websocket: failed after 30 ms/.test(e.message), `error ${e?.message}`);
    tally.expect(ORDER.every((n) => e.message.includes(`${n} refused`)), e.message);
    tally.expect(outcome.settledAt === 150 && clock.pending === 0, `settled at ${outcome.settledAt}, ${clock.pending} timers left`);
    return e.message;
  });

  await tally.check('unit race: no rung ever ready -> an error at the deadline, all closed', async () => {
    const { clock, log, race, outcome } = setup({});
    tally.expect(race.deadlineMs === 8000 + 5 * 250, `deadline ${race.deadlineMs}`);
    await clock.advanceTo(race.deadlineMs - 1);
    tally.expect(outcome.settledAt === null && log.length === 5, `settled ${outcome.settledAt}, started ${log.length}`);
    await clock.advanceTo(race.deadlineMs);
    tally.expect(outcome.error?.message === 'no rung ready within 9250 ms' && outcome.settledAt === 9250, `${outcome.error?.message} at ${outcome.settledAt}`);
    tally.expect(log.every((t) => t.closed) && clock.pending === 0, `closed ${log.map((t) => t.closed)}, ${clock.pending} timers left`);
    tally.expect(ORDER.every((n) => race.report.losers[n] === 'not ready within 8000 ms'), JSON.stringify(race.report.losers));
  });

  await tally.check('unit race: the remembered winner is tried first, alone', async () => {
    const order = raceOrder(ORDER, 'sse');
    tally.expect(order.join() === 'sse,webtransport,websocket,longpoll,poll', order.join());
    tally.expect(raceOrder(ORDER, 'gone').join() === ORDER.join() && raceOrder(ORDER, null).join() === ORDER.join(), 'unknown memory changed the order');
    const { clock, log, outcome } = setup({ sse: { opensIn: 20 }, webtransport: { opensIn: 10 } }, { order, remembered: 'sse' });
    await clock.advanceTo(20);
    tally.expect(log.map((t) => t.name).join() === 'sse', `started ${log.map((t) => t.name)}`);
    const r = outcome.value?.report;
    tally.expect(r?.winner === 'sse' && r.reason === 'first choice (remembered), ready in 20 ms', `${r?.winner}: ${r?.reason}`);
    return r.reason;
  });
}
