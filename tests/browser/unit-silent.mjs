// Unit checks of a silent WebSocket (web/ladder/transports/websocket.js on
// the client's manual clock): a socket that stays open while its liveness
// echo goes unanswered, as through a NAT that forgot the mapping without a
// reset, is given up, remembered for the origin like a race's winner, and
// left out of the next races; a socket that closes is a drop, not silence.
// The browser's WebSocket is replaced by a double whose frames move only
// when the manual clock does.

import { Ladder } from '../../web/ladder.js';
import { WebSocketTransport } from '../../web/ladder/transports/websocket.js';
import { INFO, ManualClock, fakeFetch, fakeRung, memoryStorage } from './lib/clock.mjs';

const SILENT_KEY = 'ladder.silent:http://127.0.0.1:9';
const TIMING = {
  base: 'http://127.0.0.1:9', raceDelayMs: 100, staggerMs: 50, probeTimeoutMs: 2000, reprobeMs: 0,
  backoffBaseMs: 10, backoffCapMs: 40, livenessMs: 1000, livenessTimeoutMs: 500,
};

/**
 * A WebSocket double on `clock`: opens 10 ms after it is made and answers
 * each echo 5 ms later while `net.alive`; when not, frames vanish and
 * nothing closes (a dead NAT mapping).
 */
function fakeWebSocketClass(clock, net) {
  return class FakeWebSocket {
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSING = 2;
    static CLOSED = 3;
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      net.sockets.push(this);
      clock.setTimeout(() => { this.readyState = 1; this.onopen?.(); }, 10);
    }
    send(text) {
      const op = JSON.parse(text);
      net.sent.push(op.op);
      if (op.op !== 'echo' || !net.alive) return;
      clock.setTimeout(() => { if (this.readyState === 1) this.onmessage?.({ data: JSON.stringify({ op: 'echo', data: op.data }) }); }, 5);
    }
    close(code = 1000) {
      if (this.readyState >= 2) return;
      this.readyState = 3;
      net.closed.push(code);
      clock.setTimeout(() => this.onclose?.({ code, reason: '' }), 1);
    }
  };
}

/** A client whose WebSocket rung is the real one over the double; SSE opens in 300 ms. */
function setup(storage) {
  const clock = new ManualClock();
  const net = { alive: true, sockets: [], sent: [], closed: [] };
  globalThis.WebSocket = fakeWebSocketClass(clock, net);
  globalThis.localStorage = storage;
  const impls = {
    webtransport: fakeRung('webtransport', clock, { failsIn: 5 }),
    websocket: WebSocketTransport,
    sse: fakeRung('sse', clock, { opensIn: 300 }),
    longpoll: fakeRung('longpoll', clock, {}),
    poll: fakeRung('poll', clock, {}),
  };
  const ladder = new Ladder({ ...TIMING, fetch: fakeFetch({ ...INFO, heartbeat_ms: 1000 }), clock, impls });
  const silent = [];
  ladder.on('silent', (d) => silent.push(d));
  return { clock, net, ladder, silent };
}

export async function runSilentUnit(tally) {
  const realWebSocket = globalThis.WebSocket;
  try {
    await tally.check('unit silent: an open WebSocket whose echo is never answered is given up and remembered for the origin', async () => {
      const storage = memoryStorage();
      const { clock, net, ladder, silent } = setup(storage);
      ladder.connect();
      await clock.advance(200);
      tally.expect(ladder.transport === 'websocket', `won ${ladder.transport}: ${JSON.stringify(ladder.report)}`);
      // Alive: echoes answered, nothing given up over 5 periods.
      await clock.advance(5000);
      tally.expect(ladder.transport === 'websocket' && silent.length === 0 && ladder.stats.reconnects === 0,
        `alive: on ${ladder.transport}, ${silent.length} silent, ${ladder.stats.reconnects} reconnects`);
      tally.expect(net.sent.filter((o) => o === 'echo').length === 5, `echoes sent: ${net.sent.filter((o) => o === 'echo').length}`);
      // The mapping dies: the next echo (within 1 s) goes unanswered for 500 ms.
      net.alive = false;
      await clock.advance(1600);
      tally.expect(silent.length === 1 && silent[0].transport === 'websocket', `silent events ${JSON.stringify(silent)}`);
      const remembered = JSON.parse(storage.getItem(SILENT_KEY) || '{}');
      tally.expect(remembered.websocket?.until > Date.now() && /no answer to a liveness echo/.test(remembered.websocket.reason),
        `remembered ${JSON.stringify(remembered)}`);
      tally.expect(net.closed.includes(1000), `the silent socket was not closed: ${JSON.stringify(net.closed)}`);
      // The reconnect races without it.
      await clock.advance(1000);
      tally.expect(ladder.transport === 'sse' && /went silent on this network/.test(ladder.report.losers.websocket),
        `reconnected on ${ladder.transport}: ${JSON.stringify(ladder.report)}`);
      ladder.close();
      return ladder.report.losers.websocket;
    });

    await tally.check('unit silent: a later client on the same origin skips the silent WebSocket; a forced one does not remember', async () => {
      const storage = memoryStorage();
      storage.setItem(SILENT_KEY, JSON.stringify({ websocket: { until: Date.now() + 60000, reason: 'websocket unresponsive' } }));
      const { clock, net, ladder } = setup(storage);
      ladder.connect();
      await clock.advance(1000);
      tally.expect(ladder.transport === 'sse' && net.sockets.length === 0, `on ${ladder.transport}, ${net.sockets.length} sockets opened`);
      ladder.close();

      const fresh = memoryStorage();
      const forced = setup(fresh);
      const l2 = new Ladder({ ...TIMING, force: 'websocket', fetch: fakeFetch({ ...INFO, heartbeat_ms: 1000 }), clock: forced.clock,
        impls: { websocket: WebSocketTransport } });
      l2.connect();
      await forced.clock.advance(100);
      forced.net.alive = false;
      await forced.clock.advance(1600);
      tally.expect(l2.stats.silent === 1 && fresh.getItem(SILENT_KEY) === null, `forced: ${l2.stats.silent} silent, stored ${fresh.getItem(SILENT_KEY)}`);
      l2.close();
    });

    await tally.check('unit silent: a WebSocket that closes is a drop, not silence (nothing remembered)', async () => {
      const storage = memoryStorage();
      const { clock, net, ladder, silent } = setup(storage);
      ladder.connect();
      await clock.advance(200);
      tally.expect(ladder.transport === 'websocket', `won ${ladder.transport}`);
      net.sockets[0].close(1006);
      await clock.advance(300);
      tally.expect(silent.length === 0 && storage.getItem(SILENT_KEY) === null && ladder.stats.reconnects === 1 && ladder.transport === 'websocket',
        `${silent.length} silent, stored ${storage.getItem(SILENT_KEY)}, ${ladder.stats.reconnects} reconnects, on ${ladder.transport}`);
      ladder.close();
    });
  } finally {
    globalThis.WebSocket = realWebSocket;
  }
}
