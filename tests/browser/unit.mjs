// Unit checks of web/ladder.js in Node, with test-double transports: the
// fallback race, the remembered winner and re-probe, backoff bounds, and the
// one-cursor dedupe across drops and epoch changes. No browser, no server.

import { Ladder, backoffDelay, hexToBytes } from '../../web/ladder.js';

const INFO = {
  version: 'test',
  transports: ['webtransport', 'websocket', 'sse', 'longpoll', 'poll'],
  webtransport: { url: 'https://127.0.0.1:1/wt', cert_sha256: 'ab'.repeat(32) },
};

function fakeFetch(info = INFO) {
  return async () => ({ ok: true, status: 200, json: async () => info });
}

/** A transport double: ready (or failing) after `delayMs`. */
function fake(name, { delayMs = 0, fail = null, log = [] } = {}) {
  return class {
    constructor(ladder) { this.ladder = ladder; this.name = name; this.closed = false; this.subscribed = []; log.push(this); }
    open() { return new Promise((res, rej) => setTimeout(() => (fail ? rej(new Error(fail)) : res()), delayMs)); }
    subscribe(sub) { this.subscribed.push({ channel: sub.channel, ...sub.cursor }); }
    unsubscribe() {}
    close() { this.closed = true; }
  };
}

function memoryStorage() {
  const m = new Map();
  return { getItem: (k) => (m.has(k) ? m.get(k) : null), setItem: (k, v) => m.set(k, String(v)), removeItem: (k) => m.delete(k) };
}

function once(emitter, event, timeoutMs = 3000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no ${event} within ${timeoutMs} ms`)), timeoutMs);
    const off = emitter.on(event, (d) => { clearTimeout(t); off(); resolve(d); });
  });
}

const BASE = { base: 'http://127.0.0.1:9', raceDelayMs: 100, staggerMs: 50, probeTimeoutMs: 2000, reprobeMs: 0, backoffBaseMs: 10, backoffCapMs: 40 };

export async function runUnit(tally) {
  globalThis.localStorage = memoryStorage();

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

  await tally.check('unit: WebTransport not ready in the window -> WebSocket wins the race', async () => {
    globalThis.localStorage = memoryStorage();
    const log = [];
    const ladder = new Ladder({
      ...BASE, fetch: fakeFetch(),
      impls: { webtransport: fake('webtransport', { delayMs: 5000, log }), websocket: fake('websocket', { delayMs: 20, log }), sse: fake('sse', { delayMs: 5, log }), longpoll: fake('longpoll', { delayMs: 5, log }), poll: fake('poll', { log }) },
    });
    await ladder.connect();
    const r = ladder.report;
    ladder.close();
    tally.expect(ladder.transport === 'websocket', `won ${ladder.transport}: ${JSON.stringify(r)}`);
    tally.expect(r.elapsedMs >= 100 && r.elapsedMs < 400, `elapsed ${r.elapsedMs}`);
    tally.expect(/not ready/.test(r.losers.webtransport), `webtransport: ${r.losers.webtransport}`);
    tally.expect(log.find((t) => t.name === 'webtransport').closed, 'losing WebTransport attempt not closed');
    tally.expect(JSON.parse(globalThis.localStorage.getItem('ladder.rung:http://127.0.0.1:9')).rung === 'websocket', 'winner not remembered');
    return r.reason;
  });

  await tally.check('unit: WebTransport failing fast -> next rung starts at once', async () => {
    globalThis.localStorage = memoryStorage();
    const ladder = new Ladder({
      ...BASE, raceDelayMs: 1000, fetch: fakeFetch(),
      impls: { webtransport: fake('webtransport', { delayMs: 5, fail: 'handshake failed' }), websocket: fake('websocket', { delayMs: 5 }) },
    });
    await ladder.connect();
    const r = ladder.report;
    ladder.close();
    tally.expect(ladder.transport === 'websocket' && r.elapsedMs < 500, `won ${ladder.transport} in ${r.elapsedMs} ms`);
    tally.expect(/failed.*handshake failed/.test(r.losers.webtransport), r.losers.webtransport);
  });

  await tally.check('unit: remembered winner goes first, better rung re-probed and upgraded to', async () => {
    globalThis.localStorage = memoryStorage();
    globalThis.localStorage.setItem('ladder.rung:http://127.0.0.1:9', JSON.stringify({ rung: 'sse' }));
    const ladder = new Ladder({
      ...BASE, reprobeMs: 50, fetch: fakeFetch(),
      impls: { webtransport: fake('webtransport', { delayMs: 10 }), websocket: fake('websocket', { delayMs: 10 }), sse: fake('sse', { delayMs: 10 }) },
    });
    const upgraded = once(ladder, 'upgrade');
    await ladder.connect();
    const first = ladder.transport;
    const reason = ladder.report.reason;
    const sub = ladder.subscribe('c', { since: 7, epoch: 'e1' }, () => {});
    const up = await upgraded;
    const cursorOnNew = ladder._transport.subscribed.at(-1);
    ladder.close();
    tally.expect(first === 'sse' && /remembered/.test(reason), `first ${first} (${reason})`);
    tally.expect(up.to === 'webtransport' && ladder.transport === 'webtransport', `upgrade ${JSON.stringify(up)}`);
    tally.expect(cursorOnNew.offset === 7 && cursorOnNew.epoch === 'e1', `resubscribed with ${JSON.stringify(cursorOnNew)}`);
    tally.expect(sub.cursor.offset === 7, 'cursor moved');
  });

  await tally.check('unit: one cursor: no repeat, no gap across a drop; truncated takes the new epoch', async () => {
    globalThis.localStorage = memoryStorage();
    const log = [];
    const ladder = new Ladder({ ...BASE, force: 'websocket', fetch: fakeFetch(), impls: { websocket: fake('websocket', { delayMs: 1, log }) } });
    await ladder.connect();
    const got = [];
    const truncs = [];
    const sub = ladder.subscribe('c', { since: 0, onTruncated: (t) => truncs.push(t) }, (m) => got.push(m.offset));
    const msg = (offset) => ({ op: 'message', channel: 'c', offset, data: offset, ts: Date.now() });
    ladder._subscribed('c', 'e1', 0);
    for (const o of [1, 2, 3]) ladder._message(msg(o));
    const reopened = once(ladder, 'open');
    ladder.drop();
    await reopened;
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

  await tally.check('unit: a forced rung the server does not offer is reported unavailable', async () => {
    const ladder = new Ladder({ ...BASE, force: 'websocket', fetch: fakeFetch({ ...INFO, transports: ['sse'] }), impls: { websocket: fake('websocket') } });
    let err = null;
    try { await ladder.connect(); } catch (e) { err = e; }
    ladder.close();
    tally.expect(err && /not offered/.test(err.message), `error ${err?.message}`);
  });

  delete globalThis.localStorage;
}
