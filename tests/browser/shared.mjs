// Shared mode in real headless Chromium: five tabs of one origin behind one
// connection, through the SharedWorker, and again with SharedWorker taken
// away (a leader tab elected with Web Locks, relaying over
// BroadcastChannel), where the leader tab is closed mid-workload — while a
// follower tab publishes through it.

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
    window.shared.sub = ladder.subscribe(channel, {
      since: 0, presence: { client: 'visitor', events: true },
    }, (m) => window.shared.got.push(m.offset));
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
      // One connection, one subscription: the five tabs are one member, and
      // every tab is told the list.
      const who = await (await fetch(`${server.http}/api/channels/${CHANNEL}/presence`)).json();
      tally.expect(JSON.stringify(who.members.map((m) => m.id)) === '["visitor"]', `members ${JSON.stringify(who.members)}`);
      for (const t of tabs) {
        await waitState(t.page, 'the member list in every tab', () => window.shared.sub.members.has('visitor'), null, 20000);
      }
      const rung = await tabs[0].page.evaluate(() => window.shared.ladder.transport);
      const errors = tabs.flatMap((t) => t.errors);
      tally.expect(errors.length === 0, errors.join('; '));
      return `roles ${roles.join(',')}; over ${rung}`;
    });
    if (!noWorker) return;
    await tally.check(`${name}: the leader tab closes mid-workload; another takes over, every tab still gets every message once, and a follower's publishes in flight are made once`, async () => {
      const roles = await Promise.all(tabs.map((t) => t.page.evaluate(() => window.shared.ladder.role)));
      const li = roles.indexOf('leader');
      tally.expect(li >= 0 && roles.filter((r) => r === 'leader').length === 1, `roles ${roles}`);
      // A follower publishes through the leader as it closes: those in
      // flight are sent again to the next leader with their keys.
      const fi = (li + 1) % TABS;
      for (let i = 41; i <= 50; i++) await publish(server.http, i);
      await tabs[fi].page.evaluate((channel) => {
        window.shared.pubs = Promise.allSettled(Array.from({ length: 10 }, (_, k) => window.shared.ladder.publish(channel, `tab-${k}`)));
      }, CHANNEL);
      await tabs[li].page.close();
      const rest = tabs.filter((_, i) => i !== li);
      for (let i = 51; i <= 90; i++) await publish(server.http, i);
      await allGot(rest, 100, `${name} after the takeover`);
      const pubs = await tabs[fi].page.evaluate(async () => (await window.shared.pubs).map((r) => r.status));
      tally.expect(pubs.every((st) => st === 'fulfilled'), `the follower's publishes: ${pubs}`);
      const page = await (await fetch(`${server.http}/api/channels/${CHANNEL}/messages?since=0&limit=1000`)).json();
      const fromTab = page.messages.map((m) => m.data).filter((d) => String(d).startsWith('tab-')).sort();
      tally.expect(page.messages.length === 100 && fromTab.length === 10 && new Set(fromTab).size === 10,
        `${page.messages.length} messages, the follower's ${JSON.stringify(fromTab)}`);
      const after = await Promise.all(rest.map((t) => t.page.evaluate(() => window.shared.ladder.role)));
      tally.expect(after.filter((r) => r === 'leader').length === 1, `roles after ${after}`);
      await connectionsBecome(server.http, 1);
      return `tab ${li + 1} closed while tab ${fi + 1} published; roles now ${after.join(',')}`;
    });
  } finally {
    await context.close().catch(() => {});
    await stopServer(server);
  }
}

/** Both paths of shared mode, then presence counted per user and per tab. */
export async function runShared(browser, tally) {
  await scenario(browser, tally, { name: 'shared (SharedWorker)', noWorker: false });
  await scenario(browser, tally, { name: 'shared (leader tab, no SharedWorker)', noWorker: true });
  await sharedPresence(browser, tally);
}

/** The members `/api/channels/{channel}/presence` lists, as `id` or `id tab`. */
async function presenceOf(http, channel) {
  const body = await (await fetch(`${http}/api/channels/${channel}/presence`)).json();
  return body.members.map((m) => (m.tab ? `${m.id} ${m.tab}` : m.id)).sort();
}

/** Waits (bounded) until `channel` lists exactly `want`. */
async function presenceBecomes(http, channel, want, what, timeoutMs = 20000) {
  const until = Date.now() + timeoutMs;
  let got;
  while (Date.now() < until) {
    got = await presenceOf(http, channel);
    if (JSON.stringify(got) === JSON.stringify([...want].sort())) return got;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what}: members ${JSON.stringify(got)}, not ${JSON.stringify([...want].sort())}`);
}

/**
 * Three tabs in shared mode per `sharedPresence` setting, each run in its
 * own browser context (its own worker) and against its own server (a
 * closed context's WebTransport session may linger there until its idle
 * timeout): one member per user; one per tab, and a closed tab's member
 * leaves — through the SharedWorker (with its goodbye, and without one: its
 * life lock tells the worker), and on the leader-tab path when the leader
 * tab itself closes (its connection goes; the next leader joins the other
 * tabs again, and no member is left behind).
 */
async function sharedPresence(browser, tally) {
  const open = async (server, context, by) => {
    const page = await context.newPage();
    await page.goto(`${server.http}/api/info`);
    const tab = await page.evaluate(async (by) => {
      const { Ladder } = await import('/ladder.js');
      const ladder = new Ladder({ shared: true, sharedPresence: by });
      window.shared = { ladder };
      window.shared.sub = ladder.subscribe(`by-${by}`, { presence: { client: 'visitor', events: true } }, () => {});
      ladder.connect();
      return ladder.tabId;
    }, by);
    return { page, tab };
  };
  const runs = [['user', false], ['tab', false], ['tab', true]];
  for (const [by, noWorker] of runs) {
    const server = await startServer();
    const context = await browser.newContext();
    if (noWorker) await context.addInitScript(() => { delete window.SharedWorker; });
    const path = noWorker ? 'leader tab' : 'SharedWorker';
    try {
      await tally.check(`shared presence per ${by} (${path}): three tabs on one connection are ${by === 'user' ? 'one member' : 'three members'}${by === 'tab' ? `; ${noWorker ? 'the leader tab closes' : 'a tab closes, another dies without a goodbye'}, and each member leaves` : ''}`, async () => {
        const tabs = [];
        for (let i = 0; i < 3; i++) tabs.push(await open(server, context, by));
        const channel = `by-${by}`;
        const want = by === 'user' ? ['visitor'] : tabs.map((t) => `visitor ${t.tab}`);
        await presenceBecomes(server.http, channel, want, `per ${by}`);
        await connectionsBecome(server.http, 1);
        // Every tab is told the same list.
        for (const t of tabs) {
          await waitState(t.page, 'the member list in every tab', (n) => window.shared.sub.members.size === n, want.length, 20000);
        }
        if (by === 'user') return `members ${want}`;
        const roles = await Promise.all(tabs.map((t) => t.page.evaluate(() => window.shared.ladder.role)));
        const gone = noWorker ? roles.indexOf('leader') : 2;
        tally.expect(gone >= 0, `roles ${roles}`);
        await tabs[gone].page.close();
        const rest = want.filter((_, i) => i !== gone);
        await presenceBecomes(server.http, channel, rest, 'after a tab closed');
        for (const t of tabs.filter((_, i) => i !== gone)) {
          await waitState(t.page, 'the closed tab gone from every list', (n) => window.shared.sub.members.size === n, rest.length, 20000);
        }
        if (noWorker) return `members ${want.length}, then ${rest.length} after tab ${gone + 1} (${roles[gone]}) closed`;
        // A tab that dies without its goodbye (as a crashed one does): the
        // worker is granted its life lock and lets it go.
        await tabs[1].page.evaluate(() => { window.shared.ladder._send = () => {}; });
        await tabs[1].page.close();
        await presenceBecomes(server.http, channel, want.slice(0, 1), 'after a tab died without a goodbye');
        await waitState(tabs[0].page, 'the dead tab gone from the list', () => window.shared.sub.members.size === 1, null, 20000);
        return `members ${want.length}, then ${rest.length} after tab 3 closed, then 1 after tab 2 went without a goodbye`;
      });
    } finally {
      await context.close().catch(() => {});
      await stopServer(server);
    }
  }
  // Per tab on the HTTP rungs (the better rungs turned off): the stream or
  // each poll names the tabs, so each is a member there too, and a closed
  // tab leaves: at once on SSE (the stream is re-opened without it), after
  // the poll lease on long polls (the polls name it no more).
  const socketsOff = ['--disable', 'webtransport', '--disable', 'websocket'];
  const rungs = [
    ['sse', socketsOff],
    ['longpoll', [...socketsOff, '--disable', 'sse', '--presence-lapse', String(PRESENCE_LAPSE_S)]],
  ];
  for (const [expected, args] of rungs) {
    const server = await startServer(args);
    const context = await browser.newContext();
    try {
      await tally.check(`shared presence per tab over ${expected} (no better rung): each tab is a member; a tab closes and its member leaves`, async () => {
        const tabs = [];
        for (let i = 0; i < 2; i++) tabs.push(await open(server, context, 'tab'));
        const want = tabs.map((t) => `visitor ${t.tab}`);
        await presenceBecomes(server.http, 'by-tab', want, `per tab over ${expected}`);
        const rung = await tabs[0].page.evaluate(() => window.shared.ladder.transport);
        tally.expect(rung === expected, `over ${rung}`);
        for (const t of tabs) {
          await waitState(t.page, 'the member list in every tab', (n) => window.shared.sub.members.size === n, want.length, 20000);
        }
        await tabs[1].page.close();
        await presenceBecomes(server.http, 'by-tab', want.slice(0, 1), `after a tab closed over ${expected}`);
        await waitState(tabs[0].page, 'the closed tab gone from the list', () => window.shared.sub.members.size === 1, null, 20000);
        return `over ${rung}: members ${want.length}, then 1`;
      });
    } finally {
      await context.close().catch(() => {});
      await stopServer(server);
    }
  }
}

/** The lease a poller holds between polls in the presence scenario (`--presence-lapse`, seconds). */
const PRESENCE_LAPSE_S = 2;

/**
 * Presence from web/ladder.js on every rung: each joins, a watcher follows
 * joins and leaves: an event stream's at once when it closes, the pollers'
 * once they stop polling and their lease (`--presence-lapse`) runs out.
 */
export async function runPresence(browser, tally) {
  const server = await startServer(['--presence-lapse', String(PRESENCE_LAPSE_S)]);
  const context = await browser.newContext();
  try {
    await tally.check('presence: ladder.js joins on every rung; a WebSocket watcher sees each join, a closed stream leave, and pollers that stop polling leave after the lapse', async () => {
      const page = await context.newPage();
      const errors = [];
      page.on('pageerror', (e) => errors.push(e.message));
      await page.goto(`${server.http}/api/info`);
      await page.evaluate(async () => {
        const { Ladder } = await import('/ladder.js');
        window.rungs = {};
        for (const rung of ['webtransport', 'websocket', 'sse', 'longpoll', 'poll']) {
          const ladder = new Ladder({ force: rung, remember: false, pollIntervalMs: 100 });
          const presence = { client: rung, info: { rung }, events: rung === 'websocket' };
          const sub = ladder.subscribe('who', { presence }, () => {});
          window.rungs[rung] = { ladder, sub };
          ladder.connect();
        }
        window.changes = [];
        window.rungs.websocket.ladder.on('presence', ({ change }) => {
          if (change.member) window.changes.push(`${change.type}:${change.member.id}`);
        });
      });
      const all = ['longpoll', 'poll', 'sse', 'websocket', 'webtransport'];
      const members = async () => (await (await fetch(`${server.http}/api/channels/who/presence`)).json()).members.map((m) => m.id).sort();
      const until = async (want, what) => {
        const end = Date.now() + 20000;
        let got;
        while (Date.now() < end) {
          got = await members();
          if (JSON.stringify(got) === JSON.stringify(want)) return;
          await new Promise((r) => setTimeout(r, 100));
        }
        throw new Error(`${what}: members ${JSON.stringify(got)}`);
      };
      await until(all, 'every rung joined');
      await waitState(page, 'the watcher to list all five', (n) => window.rungs.websocket.sub.members.size === n, all.length, 20000);
      await page.evaluate(() => window.rungs.sse.ladder.close());
      await waitState(page, 'the watcher to see sse leave', () => !window.rungs.websocket.sub.members.has('sse'), null, 20000);
      await until(all.filter((r) => r !== 'sse'), 'sse left');
      // The pollers stop polling: nothing holds them but their lease, so
      // they leave once it runs out (bounded wait; no timing asserted).
      await page.evaluate(() => { window.rungs.poll.ladder.close(); window.rungs.longpoll.ladder.close(); });
      await waitState(page, 'the watcher to see both pollers leave', () => ['poll', 'longpoll']
        .every((r) => !window.rungs.websocket.sub.members.has(r)), null, 20000 + 3000 * PRESENCE_LAPSE_S);
      await until(['websocket', 'webtransport'], 'the pollers lapsed');
      const changes = await page.evaluate(() => window.changes);
      for (const r of ['sse', 'poll', 'longpoll']) {
        tally.expect(changes.filter((c) => c === `leave:${r}`).length === 1, `${r}: changes ${changes.join()}`);
      }
      tally.expect(errors.length === 0, errors.join('; '));
      return `left: ${changes.filter((c) => c.startsWith('leave:')).join(', ')}`;
    });
  } finally {
    await context.close().catch(() => {});
    await stopServer(server);
  }
}

/** The page's presence card follows panels connecting and dropping. */
export async function runPagePresence(browser, tally) {
  const server = await startServer();
  const context = await browser.newContext();
  try {
    await tally.check('presence: the page lists the joined panels and follows a drop (leave, then join again)', async () => {
      const page = await context.newPage();
      await page.goto(`${server.http}/`);
      const ids = ['auto', 'ws', 'wt', 'wtdg'];
      await waitState(page, 'the presence list to hold every joining panel',
        (want) => JSON.stringify(window.ladderState.presence.members.map((m) => m.id).sort()) === JSON.stringify(want), ids, 30000);
      const shown = await page.locator('#presence-list li').count();
      tally.expect(shown === ids.length, `${shown} list items`);
      // The WebSocket panel's reconnect is held back until its leave is
      // seen: it starts by fetching /api/info, and the server counts one id
      // on two connections as one member, so a reconnect that overtook the
      // old connection's end would show no leave.
      let release;
      const held = new Promise((r) => { release = r; });
      const info = (url) => url.pathname === '/api/info';
      let heldBack = 0;
      await page.route(info, async (route) => { heldBack++; await held; await route.continue(); });
      const wsLog = () => window.ladderState.presence.log.filter((c) => c.id === 'ws').map((c) => c.type);
      const before = (await page.evaluate(wsLog)).length;
      try {
        await page.evaluate(() => window.ladderApp.panels().find((p) => p.cfg.id === 'ws').drop());
        await waitState(page, 'ws to leave', (n) => {
          const log = window.ladderState.presence.log.filter((c) => c.id === 'ws');
          return log.slice(n).some((c) => c.type === 'leave');
        }, before, 30000);
        release();
        await waitState(page, 'ws to join again', (n) => {
          const log = window.ladderState.presence.log.filter((c) => c.id === 'ws').slice(n);
          const left = log.findIndex((c) => c.type === 'leave');
          return left >= 0 && log.slice(left + 1).some((c) => c.type === 'join');
        }, before, 30000);
      } finally {
        release();
        await page.unroute(info);
      }
      const log = (await page.evaluate(wsLog)).slice(before);
      tally.expect(heldBack >= 1, 'the reconnect was never held back');
      tally.expect(log.join() === 'leave,join', `ws's changes after the drop: ${log.join()}`);
      return `${(await page.locator('#presence-count').textContent()) || ''}; ${heldBack} /api/info held back`;
    });
  } finally {
    await context.close().catch(() => {});
    await stopServer(server);
  }
}
