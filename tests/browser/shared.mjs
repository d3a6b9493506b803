// Shared mode in real headless Chromium: five tabs of one origin behind one
// connection, through the SharedWorker, and again with SharedWorker taken
// away (a leader tab elected with Web Locks, relaying over
// BroadcastChannel), where the leader tab is closed mid-workload.

import { startServer, stopServer, waitState } from './lib/harness.mjs';

const TABS = 5;
const CHANNEL = 'tabs';

/** Open connections the server counts, over every rung that holds one. */
async function openConnections(http) {
  const stats = await (await fetch(`${http}/api/stats`)).json();
  let n = 0;
  for (const rung of ['webtransport', 'websocket', 'sse', 'longpoll']) n += Number(stats.transports?.[rung]?.connections_open || 0);
  return n;
}

/** Waits (bounded) until the server counts exactly `want` open connections. */
async function connectionsBecome(http, want, timeoutMs = 20000) {
  const until = Date.now() + timeoutMs;
  let n;
  while (Date.now() < until) {
    n = await openConnections(http);
    if (n === want) return n;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`the server counts ${n} open connections, not ${want}`);
}

async function publish(http, i) {
  const res = await fetch(`${http}/api/channels/${CHANNEL}/messages`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(i),
  });
  if (res.status !== 201) throw new Error(`publish ${i}: ${res.status}`);
}

/** A tab: the page at the server's origin running `new Ladder({ shared: true })`. */
async function openTab(context, http) {
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${http}/api/info`);
  await page.evaluate(async (channel) => {
    const { Ladder } = await import('/ladder.js');
    const ladder = new Ladder({ shared: true });
    window.shared = { got: [], ladder };
    ladder.subscribe(channel, { since: 0 }, (m) => window.shared.got.push(m.offset));
    ladder.connect();
  }, CHANNEL);
  return { page, errors };
}

async function allGot(tabs, n, what) {
  for (const t of tabs) {
    await waitState(t.page, `${what}: offsets 1..${n}`, (k) => window.shared.got.length >= k, n, 30000);
    const got = await t.page.evaluate(() => window.shared.got);
    const want = Array.from({ length: n }, (_, i) => i + 1);
    if (JSON.stringify(got) !== JSON.stringify(want)) {
      throw new Error(`${what}: a tab got ${JSON.stringify(got)}`);
    }
  }
}

async function scenario(browser, tally, { name, noWorker }) {
  const server = await startServer();
  const context = await browser.newContext();
  try {
    if (noWorker) await context.addInitScript(() => { delete window.SharedWorker; });
    const tabs = [];
    for (let i = 0; i < TABS; i++) tabs.push(await openTab(context, server.http));
    await tally.check(`${name}: five tabs, one connection, every tab gets every message once`, async () => {
      for (const t of tabs) await waitState(t.page, 'the shared connection open', () => window.shared.ladder.state === 'open', null, 20000);
      const roles = await Promise.all(tabs.map((t) => t.page.evaluate(() => window.shared.ladder.role)));
      await connectionsBecome(server.http, 1);
      for (let i = 1; i <= 40; i++) await publish(server.http, i);
      await allGot(tabs, 40, name);
      tally.expect(await openConnections(server.http) === 1, 'more than one connection after the run');
      const rung = await tabs[0].page.evaluate(() => window.shared.ladder.transport);
      const errors = tabs.flatMap((t) => t.errors);
      tally.expect(errors.length === 0, errors.join('; '));
      return `roles ${roles.join(',')}; over ${rung}`;
    });
    if (!noWorker) return;
    await tally.check(`${name}: the leader tab closes mid-workload; another takes over, every tab still gets every message once`, async () => {
      const roles = await Promise.all(tabs.map((t) => t.page.evaluate(() => window.shared.ladder.role)));
      const li = roles.indexOf('leader');
      tally.expect(li >= 0 && roles.filter((r) => r === 'leader').length === 1, `roles ${roles}`);
      for (let i = 41; i <= 60; i++) await publish(server.http, i);
      await tabs[li].page.close();
      const rest = tabs.filter((_, i) => i !== li);
      for (let i = 61; i <= 100; i++) await publish(server.http, i);
      await allGot(rest, 100, `${name} after the takeover`);
      const after = await Promise.all(rest.map((t) => t.page.evaluate(() => window.shared.ladder.role)));
      tally.expect(after.filter((r) => r === 'leader').length === 1, `roles after ${after}`);
      await connectionsBecome(server.http, 1);
      return `tab ${li + 1} closed; roles now ${after.join(',')}`;
    });
  } finally {
    await context.close().catch(() => {});
    await stopServer(server);
  }
}

/** Both paths of shared mode. */
export async function runShared(browser, tally) {
  await scenario(browser, tally, { name: 'shared (SharedWorker)', noWorker: false });
  await scenario(browser, tally, { name: 'shared (leader tab, no SharedWorker)', noWorker: true });
}
