// Unit checks of shared mode (web/ladder/shared/) in Node, no browser:
// several "tabs" in one process, each with its own SharedLadder, over an
// in-memory BroadcastChannel and a FIFO exclusive lock manager shaped like
// navigator.locks, and a fake server standing in for the host's Ladder
// (one open connection per host, replay from `since`, then live). A tab
// crash is what the browser does when a tab dies: its channel goes
// silent and its lock is released, with no goodbye.

import { SharedLadder, sharedPath } from '../../web/ladder/shared/tab.js';
import { TabJoins } from '../../web/ladder/tab-joins.js';
import { Subscription } from '../../web/ladder/subscription.js';
import { SseTransport } from '../../web/ladder/transports/sse.js';
import { LongPollTransport, PollTransport } from '../../web/ladder/transports/poll.js';

/** Lets every queued message and promise run (bounded; no timers). */
async function settle(rounds = 40) {
  for (let i = 0; i < rounds; i++) await new Promise((r) => setImmediate(r));
}

/** BroadcastChannel semantics: everyone with the name but the sender, asynchronously, in order. */
class Bus {
  constructor() { this.members = new Set(); }
  channelClass() {
    const bus = this;
    return class FakeBroadcastChannel {
      constructor(name) { this.name = name; this.onmessage = null; this.closed = false; bus.members.add(this); }
      postMessage(data) {
        if (this.closed) return;
        const copy = structuredClone(data);
        for (const m of bus.members) {
          if (m !== this && m.name === this.name && !m.closed) setImmediate(() => { if (!m.closed) m.onmessage?.({ data: copy }); });
        }
      }
      close() { this.closed = true; bus.members.delete(this); }
    };
  }
}

/** navigator.locks for exclusive locks: granted in request order, released when the callback's promise settles or the owner dies. */
class Locks {
  constructor() { this.held = new Map(); this.queue = new Map(); }
  for(owner) {
    return {
      request: (name, opts, cb) => new Promise((resolve) => {
        const q = this.queue.get(name) || [];
        q.push({ owner, cb, resolve });
        this.queue.set(name, q);
        this._grant(name);
      }),
    };
  }
  _grant(name) {
    if (this.held.has(name)) return;
    const next = (this.queue.get(name) || []).shift();
    if (!next) return;
    this.held.set(name, next.owner);
    Promise.resolve(next.cb()).finally(() => this.release(name, next.owner));
  }
  release(name, owner) {
    if (this.held.get(name) !== owner) return;
    this.held.delete(name);
    setImmediate(() => this._grant(name));
  }
  /** The browser's part when a tab dies: its held lock goes, its queued requests too. */
  dropOwner(owner) {
    for (const [name, q] of this.queue) this.queue.set(name, q.filter((r) => r.owner !== owner));
    for (const [name, o] of this.held) if (o === owner) this.release(name, owner);
  }
}

/** One channel log and the connections (host Ladders) open to it. */
class FakeServer {
  constructor() {
    this.log = new Map(); this.open = 0; this.opened = 0; this.live = new Set(); this.keys = new Map(); this.stall = false;
    /** channel -> member key (`id` or `id tab`) -> holders, as the server's registry counts them. */
    this.presence = new Map();
    /** What the fake is told about presence per tab: `join|leave channel key`. */
    this.presenceOps = [];
  }
  hold(channel, key) {
    const m = this.presence.get(channel) || new Map();
    m.set(key, (m.get(key) || 0) + 1);
    this.presence.set(channel, m);
  }
  release(channel, key) {
    const m = this.presence.get(channel);
    if (!m?.has(key)) return;
    if (m.get(key) > 1) m.set(key, m.get(key) - 1); else m.delete(key);
  }
  /** The members of `channel`, sorted. */
  members(channel) { return [...(this.presence.get(channel)?.keys() || [])].sort(); }
  /** Appends, unless `key` was seen: then the first append's answer (the server's idempotency). */
  publish(channel, data, key) {
    if (key && this.keys.has(`${channel} ${key}`)) return this.keys.get(`${channel} ${key}`);
    const list = this.log.get(channel) || [];
    const msg = { channel, offset: list.length + 1, data, ts: 0 };
    list.push(msg);
    this.log.set(channel, list);
    for (const s of this.live) if (s.channel === channel) s.push(msg);
    const ack = { channel, epoch: 'e1', offset: msg.offset };
    if (key) this.keys.set(`${channel} ${key}`, ack);
    return ack;
  }
  ladderClass() {
    const server = this;
    return class FakeLadder {
      constructor(options) { this.options = options; this.state = 'idle'; this.transport = null; this.handlers = []; this.subs = new Set(); this.joins = new Map(); }
      on(ev, fn) { if (ev === 'state') this.handlers.push(fn); }
      /** Held by this connection until leavePresence or close, as on the server. */
      joinPresence(channel, tab, { client }) {
        const key = `${client} ${tab}`;
        if (this.joins.has(`${channel}\n${tab}`)) return;
        this.joins.set(`${channel}\n${tab}`, { channel, key });
        server.presenceOps.push(`join ${channel} ${key}`);
        server.hold(channel, key);
      }
      leavePresence(channel, tab) {
        const j = this.joins.get(`${channel}\n${tab}`);
        if (!j) return;
        this.joins.delete(`${channel}\n${tab}`);
        server.presenceOps.push(`leave ${channel} ${j.key}`);
        server.release(channel, j.key);
      }
      async connect() {
        server.open++;
        server.opened++;
        this.state = 'open';
        this.transport = 'websocket';
        for (const h of this.handlers) h({ state: 'open' });
      }
      subscribe(channel, opts, onMessage) {
        const log = server.log.get(channel) || [];
        const head = log.length;
        const since = opts.since === undefined ? head : opts.since;
        const sub = {
          channel,
          cursor: { offset: since, epoch: 'e1' },
          ready: Promise.resolve({ epoch: 'e1', head }),
          push: (m) => setImmediate(() => {
            if (!server.live.has(sub) || m.offset <= sub.cursor.offset) return;
            sub.cursor.offset = m.offset;
            onMessage({ ...m });
          }),
          unsubscribe: () => {
            server.live.delete(sub);
            this.subs.delete(sub);
            if (sub.member) server.release(channel, sub.member);
          },
          // The subscription joins as its `client`, unless its tabs join.
          member: opts.presence?.client && !opts.presence.tabs ? opts.presence.client : null,
          presence: opts.presence || null,
        };
        if (sub.member) server.hold(channel, sub.member);
        server.live.add(sub);
        this.subs.add(sub);
        for (const m of log.slice(since)) sub.push(m);
        return sub;
      }
      /** With `server.stall`, the publish is made but its answer never comes (a lost ack). */
      async publish(channel, data, opts = {}) {
        const ack = server.publish(channel, data, opts.idempotencyKey);
        if (server.stall) await new Promise(() => {});
        return ack;
      }
      close() {
        if (this.state === 'closed') return;
        this.state = 'closed';
        server.open--;
        for (const s of this.subs) { server.live.delete(s); if (s.member) server.release(s.channel, s.member); }
        for (const j of this.joins.values()) server.release(j.channel, j.key);
        this.joins.clear();
      }
    };
  }
}

/** A group of tabs on one fake server. */
function world() {
  const bus = new Bus();
  const locks = new Locks();
  const server = new FakeServer();
  const tabs = [];
  const open = (extra = {}) => {
    const id = `tab${tabs.length + 1}`;
    const env = { BroadcastChannel: bus.channelClass(), navigator: { locks: locks.for(id) } };
    const t = new SharedLadder({ base: 'http://127.0.0.1:9', env, tabId: id, ...extra }, server.ladderClass());
    t.got = [];
    tabs.push(t);
    return t;
  };
  const crash = (t) => {
    t.election._stopped = true;
    t.election.host?.close();
    t.election.bc.close();
    locks.dropOwner(t.tabId);
  };
  return { bus, locks, server, tabs, open, crash };
}

function follow(t, channel, opts = { since: 0 }) {
  return t.subscribe(channel, opts, (m) => t.got.push(m.offset));
}

function exactly(got, n) { return JSON.stringify(got) === JSON.stringify(Array.from({ length: n }, (_, i) => i + 1)); }

export async function runSharedUnit(tally) {
  await tally.check('unit: shared path: SharedWorker where there is one, else a leader tab, else none', () => {
    const locks = { request() {} };
    class BC {}
    class SW {}
    tally.expect(sharedPath({ SharedWorker: SW, BroadcastChannel: BC, navigator: { locks } }) === 'worker', 'worker first');
    tally.expect(sharedPath({ BroadcastChannel: BC, navigator: { locks } }) === 'leader', 'leader without SharedWorker');
    tally.expect(sharedPath({ SharedWorker: SW, BroadcastChannel: BC, navigator: { locks } }, 'leader') === 'leader', 'leader on request');
    tally.expect(sharedPath({ BroadcastChannel: BC }) === null, 'neither without Web Locks');
  });

  await tally.check('unit: shared (leader tab): five tabs, one connection, every tab gets every message once', async () => {
    const w = world();
    w.server.publish('room', 'early');
    for (let i = 0; i < 5; i++) { const t = w.open(); follow(t, 'room'); t.connect(); }
    await settle();
    const leaders = w.tabs.filter((t) => t.role === 'leader');
    tally.expect(leaders.length === 1, `${leaders.length} leaders`);
    for (let i = 2; i <= 30; i++) w.server.publish('room', i);
    await settle();
    tally.expect(w.server.open === 1 && w.server.opened === 1, `${w.server.open} open, ${w.server.opened} opened`);
    for (const t of w.tabs) {
      tally.expect(exactly(t.got, 30), `${t.tabId} (${t.role}) got ${JSON.stringify(t.got)}`);
      tally.expect(t.state === 'open', `${t.tabId} state ${t.state}`);
    }
    return `leader ${leaders[0].tabId}`;
  });

  await tally.check('unit: shared (leader tab): the leader dies mid-stream, the next takes over, cursors resume', async () => {
    const w = world();
    for (let i = 0; i < 5; i++) { const t = w.open(); follow(t, 'room'); t.connect(); }
    await settle();
    for (let i = 1; i <= 10; i++) w.server.publish('room', i);
    await settle();
    const old = w.tabs.find((t) => t.role === 'leader');
    // Messages published while nobody leads are resumed from the cursors.
    w.crash(old);
    for (let i = 11; i <= 15; i++) w.server.publish('room', i);
    await settle();
    for (let i = 16; i <= 25; i++) w.server.publish('room', i);
    await settle();
    const rest = w.tabs.filter((t) => t !== old);
    const leaders = rest.filter((t) => t.role === 'leader');
    tally.expect(leaders.length === 1 && leaders[0] !== old, `${leaders.length} new leaders`);
    tally.expect(w.server.open === 1 && w.server.opened === 2, `${w.server.open} open, ${w.server.opened} opened`);
    for (const t of rest) tally.expect(exactly(t.got, 25), `${t.tabId} (${t.role}) got ${JSON.stringify(t.got)}`);
    tally.expect(rest.every((t) => t.stats.leaderChanges === 1), `leader changes ${rest.map((t) => t.stats.leaderChanges)}`);
    return `${old.tabId} -> ${leaders[0].tabId}`;
  });

  await tally.check('unit: shared: a tab asking from further back gets history; the others see no repeat', async () => {
    const w = world();
    const a = w.open();
    follow(a, 'room');
    a.connect();
    await settle();
    for (let i = 1; i <= 5; i++) w.server.publish('room', i);
    await settle();
    const b = w.open();
    follow(b, 'room', { since: 2 });
    b.connect();
    await settle();
    w.server.publish('room', 6);
    await settle();
    tally.expect(exactly(a.got, 6), `a got ${JSON.stringify(a.got)}`);
    tally.expect(JSON.stringify(b.got) === '[3,4,5,6]', `b got ${JSON.stringify(b.got)}`);
    tally.expect([...a._subs.values()][0].stats.duplicatesDropped === 3, 'a dropped the replayed 3..5');
  });

  await tally.check('unit: shared: publishes relay through the leader; unsubscribing the last tab lets the channel go', async () => {
    const w = world();
    const a = w.open();
    const b = w.open();
    a.connect();
    b.connect();
    await settle();
    const sub = follow(a, 'x', {});
    await settle();
    const ack = await Promise.race([b.publish('x', 'hi'), settle().then(() => null)]);
    await settle();
    tally.expect(ack && ack.offset === 1, `ack ${JSON.stringify(ack)}`);
    tally.expect(JSON.stringify(a.got) === '[1]', `a got ${JSON.stringify(a.got)}`);
    sub.unsubscribe();
    await settle();
    tally.expect(w.server.live.size === 0, `${w.server.live.size} server subscriptions left`);
  });

  await tally.check('unit: shared (leader tab): publishes in flight when the leader dies are made once, through the next', async () => {
    const w = world();
    for (let i = 0; i < 3; i++) { const t = w.open(); follow(t, 'room'); t.connect(); }
    await settle();
    const old = w.tabs.find((t) => t.role === 'leader');
    const [a, b] = w.tabs.filter((t) => t !== old);
    // One publish reaches the server but its answer is lost with the
    // leader; another is still on its way to the leader when it dies.
    w.server.stall = true;
    const made = a.publish('room', 'made');
    let settled = 0;
    made.then(() => settled++, () => settled++);
    await settle();
    w.server.stall = false;
    tally.expect(settled === 0 && w.server.log.get('room').length === 1, 'the first publish is made, unanswered');
    const unsent = b.publish('room', 'unsent');
    w.crash(old);
    const acks = await Promise.race([Promise.all([made, unsent]), settle(200).then(() => null)]);
    await settle();
    tally.expect(acks !== null, 'both publishes answered after the takeover');
    const log = w.server.log.get('room').map((m) => m.data);
    tally.expect(JSON.stringify(log) === '["made","unsent"]', `the log holds each once: ${JSON.stringify(log)}`);
    tally.expect(acks?.[0].offset === 1 && acks?.[1].offset === 2, `acks ${JSON.stringify(acks)}`);
    for (const t of [a, b]) tally.expect(exactly(t.got, 2), `${t.tabId} got ${JSON.stringify(t.got)}`);
    tally.expect(a._pending.size === 0 && b._pending.size === 0, 'nothing left pending');
    return `${old.tabId} -> ${[a, b].find((t) => t.role === 'leader')?.tabId}`;
  });

  await tally.check('unit: shared: presence per user (the default): the tabs are one member', async () => {
    const w = world();
    for (let i = 0; i < 3; i++) {
      const t = w.open();
      follow(t, 'room', { presence: { client: 'ann' } });
      t.connect();
    }
    await settle();
    tally.expect(JSON.stringify(w.server.members('room')) === '["ann"]', `members ${w.server.members('room')}`);
    tally.expect(w.server.presenceOps.length === 0, `per-tab joins ${w.server.presenceOps}`);
    const host = w.tabs.find((t) => t.role === 'leader').election.host;
    tally.expect(host.channels.get('room').sub.presence?.client === 'ann', 'the subscription joins as the client');
  });

  await tally.check('unit: shared: presence per tab: each tab a member; a tab closing, a tab dying and a leader dying leave no ghost', async () => {
    const w = world();
    for (let i = 0; i < 4; i++) {
      const t = w.open({ sharedPresence: 'tab' });
      follow(t, 'room', { presence: { client: 'ann', info: { n: i } } });
      t.connect();
    }
    await settle();
    const want = (tabs) => JSON.stringify(tabs.map((t) => `ann ${t.tabId}`).sort());
    tally.expect(JSON.stringify(w.server.members('room')) === want(w.tabs), `members ${w.server.members('room')}`);
    const host = () => w.tabs.find((t) => t.role === 'leader').election.host;
    // The one subscription joins nobody itself; its tabs join one by one.
    tally.expect(host().channels.get('room').sub.presence?.tabs === true, 'the subscription is made with tabs: true');
    // A follower tab closes (its goodbye): its member leaves.
    const gone = w.tabs.find((t) => t.role === 'follower');
    gone.close();
    await settle();
    let left = w.tabs.filter((t) => t !== gone);
    tally.expect(JSON.stringify(w.server.members('room')) === want(left), `after a tab closed: ${w.server.members('room')}`);
    tally.expect(w.server.presenceOps.includes(`leave room ann ${gone.tabId}`), `ops ${w.server.presenceOps}`);
    // A follower dies without a goodbye: the leader is granted its life
    // lock, and its member leaves all the same.
    const dead = left.find((t) => t.role === 'follower');
    w.crash(dead);
    await settle();
    left = left.filter((t) => t !== dead);
    tally.expect(JSON.stringify(w.server.members('room')) === want(left), `after a tab died: ${w.server.members('room')}`);
    // The leader dies without a word: its connection goes with every
    // member it held, and the next leader joins the remaining tabs.
    const old = left.find((t) => t.role === 'leader');
    w.crash(old);
    await settle();
    left = left.filter((t) => t !== old);
    tally.expect(w.server.open === 1 && w.server.opened === 2, `${w.server.open} open, ${w.server.opened} opened`);
    tally.expect(JSON.stringify(w.server.members('room')) === want(left), `after the leader died: ${w.server.members('room')}`);
    // Unsubscribing leaves; the channel goes with its last tab.
    for (const t of left) [...t._subs.values()][0].unsubscribe();
    await settle();
    tally.expect(w.server.members('room').length === 0 && w.server.live.size === 0, `left ${w.server.members('room')}`);
    return `${old.tabId} -> ${left.find((t) => t.role === 'leader')?.tabId}`;
  });

  await tally.check('unit: shared: sharedPresence takes user or tab, and says so otherwise', () => {
    let err = null;
    try { new SharedLadder({ sharedPresence: 'tabs', env: {} }, class {}); } catch (e) { err = e; }
    tally.expect(err && /must be 'user' or 'tab'/.test(err.message), `error ${err?.message}`);
  });

  await tally.check('unit: tab joins: sent on the connection, again on the next; a refusal is told per tab; a rung without them is sent none', async () => {
    const events = [];
    const ladder = { _transport: null, emit: (name, d) => events.push(`${name} ${d.channel} ${d.tab} ${d.error.code}`) };
    const joins = new TabJoins(ladder);
    const duplex = (name) => ({
      name, ops: [],
      presenceJoin(j) { this.ops.push(`join ${j.channel} ${j.tab} ${j.client}`); return j.tab === 'bad' ? Promise.reject(Object.assign(new Error('no'), { code: 'rate_limited' })) : Promise.resolve({}); },
      presenceLeave(channel, tab) { this.ops.push(`leave ${channel} ${tab}`); return Promise.resolve({}); },
    });
    const ws = duplex('websocket');
    ladder._transport = ws;
    joins.join('room', 't1', { client: 'ann' });
    joins.join('room', 't2', { client: 'ann' });
    joins.leave('room', 't1');
    joins.join('room', 'bad', { client: 'ann' });
    await settle();
    tally.expect(JSON.stringify(ws.ops) === '["join room t1 ann","join room t2 ann","leave room t1","join room bad ann"]', `ops ${ws.ops}`);
    tally.expect(JSON.stringify(events) === '["presence_error room bad rate_limited"]', `events ${events}`);
    // A new connection: the tabs still joined are joined on it.
    const wt = duplex('webtransport');
    joins.rejoin(wt);
    await settle();
    tally.expect(JSON.stringify(wt.ops) === '["join room t2 ann","join room bad ann"]', `rejoined ${wt.ops}`);
    // A rung without joins of its own: nothing is sent or refused.
    events.length = 0;
    joins.rejoin({ name: 'other' });
    await settle();
    tally.expect(events.length === 0, `events ${events}`);
    tally.expect(JSON.stringify(joins.of('room').map((j) => j.tab)) === '["t2","bad"]', 'of(room)');
  });

  await tally.check('unit: tabs on SSE: the stream names the joined tabs, re-opened from the cursor when they change, not when rejoined', async () => {
    const saved = globalThis.EventSource;
    const opened = [];
    globalThis.EventSource = class {
      constructor(url) { this.url = new URL(url); this.closed = false; opened.push(this); }
      addEventListener() {}
      close() { this.closed = true; }
    };
    try {
      const ladder = { options: { base: 'http://ladder.test/', missedHeartbeats: 2 }, heartbeatMs: () => null, emit() {} };
      ladder._tabJoins = new TabJoins(ladder);
      const sse = new SseTransport(ladder, {});
      ladder._transport = sse;
      const sub = new Subscription(ladder, 'room', { since: 4, presence: { events: true, tabs: true } }, () => {});
      sse.subscribe(sub);
      const q = (es) => {
        const p = es.url.searchParams;
        return `${p.getAll('tab').join('+') || '-'} ${p.get('client') ?? '-'} ${p.get('info') ?? '-'} ${p.get('since')} ${es.closed ? 'closed' : 'open'}`;
      };
      ladder._tabJoins.join('room', 't1', { client: 'ann', info: { n: 1 } });
      sub.cursor.offset = 9; // delivered meanwhile: the next stream resumes after it
      ladder._tabJoins.join('room', 't2', { client: 'ann', info: { n: 2 } });
      ladder._tabJoins.rejoin(sse); // a new connection's rejoin changes no list
      ladder._tabJoins.leave('room', 't1');
      ladder._tabJoins.leave('room', 't2');
      await settle();
      const got = opened.map(q);
      const want = ['- - - 4 closed', 't1 ann {"n":1} 4 closed', 't1+t2 ann {"n":1} 9 closed', 't2 ann {"n":2} 9 closed', '- - - 9 open'];
      tally.expect(JSON.stringify(got) === JSON.stringify(want), `streams ${JSON.stringify(got)}`);
      sse.close();
    } finally {
      globalThis.EventSource = saved;
    }
  });

  await tally.check('unit: tabs on polls: each poll names the tabs joined then; a change ends a short poll\'s pause', async () => {
    const urls = [];
    const answer = { ok: true, status: 200, headers: { get: () => null }, json: async () => ({ epoch: 'e', messages: [], next: 0 }) };
    const ladder = {
      options: { base: 'http://ladder.test/', pollLimit: 100, pollIntervalMs: 3_600_000 },
      fetch: async (url) => { urls.push(new URL(url).searchParams); return answer; },
      heartbeatMs: () => null, emit() {}, _subscribed() {}, _deliver() {}, _truncated() {}, _connectionReplaced() {},
    };
    ladder._tabJoins = new TabJoins(ladder);
    const poll = new PollTransport(ladder, {});
    ladder._transport = poll;
    const sub = new Subscription(ladder, 'room', { since: 0, presence: { tabs: true } }, () => {});
    poll.subscribe(sub);
    await settle();
    ladder._tabJoins.join('room', 't1', { client: 'ann' });
    await settle();
    ladder._tabJoins.join('room', 't2', { client: 'ann' });
    await settle();
    ladder._tabJoins.leave('room', 't1');
    await settle();
    poll.close();
    const got = urls.map((p) => `${p.getAll('tab').join('+') || '-'} ${p.get('client') ?? '-'}`);
    tally.expect(JSON.stringify(got) === '["- -","t1 ann","t1+t2 ann","t2 ann"]', `polls ${JSON.stringify(got)}`);
  });

  await tally.check('unit: tabs on long polls: a held poll is asked again with the new tabs, from the same cursor; a rejoin changes nothing', async () => {
    const polls = [];
    const ladder = {
      options: { base: 'http://ladder.test/', pollLimit: 100, longPollWaitS: 30 },
      // Held until given up, as a long poll with nothing to say is.
      fetch: (url, init) => new Promise((_, reject) => {
        polls.push(new URL(url).searchParams);
        init.signal.addEventListener('abort', () => reject(Object.assign(new Error('aborted'), { name: 'AbortError' })), { once: true });
      }),
      heartbeatMs: () => null, emit() {}, _subscribed() {}, _deliver() {}, _truncated() {}, _connectionReplaced() {},
      _transportClosed(_, reason) { polls.push(new URLSearchParams({ lost: reason })); },
    };
    ladder._tabJoins = new TabJoins(ladder);
    const poll = new LongPollTransport(ladder, {});
    ladder._transport = poll;
    const sub = new Subscription(ladder, 'room', { since: 7, presence: { tabs: true } }, () => {});
    poll.subscribe(sub);
    await settle();
    ladder._tabJoins.join('room', 't1', { client: 'ann' });
    await settle();
    ladder._tabJoins.rejoin(poll);
    await settle();
    ladder._tabJoins.join('room', 't2', { client: 'ann' });
    await settle();
    poll.close();
    await settle();
    const got = polls.map((p) => p.get('lost') ?? `${p.getAll('tab').join('+') || '-'} ${p.get('since')} ${p.get('wait')}`);
    tally.expect(JSON.stringify(got) === '["- 7 30","t1 7 30","t1+t2 7 30"]', `polls ${JSON.stringify(got)}`);
  });

  await tally.check('unit: a subscription counting tabs joins nobody on a socket, and one member per tab on a stream or poll', () => {
    const presence = { client: 'ann', info: { n: 1 }, events: true, tabs: true };
    const sub = new Subscription({ emit() {} }, 'room', { presence }, () => {});
    const op = JSON.stringify(sub.presenceOp());
    tally.expect(op === '{"join":false,"presence":true}', `subscribe op ${op}`);
    const none = sub.presenceQuery(false);
    tally.expect(JSON.stringify(none) === '{"presence":"1"}', `no tabs joined: ${JSON.stringify(none)}`);
    const joins = [{ channel: 'room', tab: 't1', client: 'ann', info: { n: 1 } }, { channel: 'room', tab: 't2', client: 'ann' }, { channel: 'room', tab: 't3', client: 'bo' }];
    const q = sub.presenceQuery(true, joins);
    tally.expect(q.client === 'ann' && q.info === '{"n":1}' && q.presence === '0' && JSON.stringify(q.tab) === '["t1","t2"]', `query ${JSON.stringify(q)}`);
    const user = new Subscription({ emit() {} }, 'room', { presence: { client: 'ann' } }, () => {});
    tally.expect(JSON.stringify(user.presenceOp()) === '{"client":"ann"}', 'per user: joins as client');
    // Members that are tabs are keyed apart from the plain id.
    sub._presenceList([{ id: 'ann', info: {} }, { id: 'ann', tab: 't1', info: {} }]);
    sub._presenceChange('join', { id: 'ann', tab: 't2', info: {} });
    sub._presenceChange('leave', { id: 'ann', tab: 't1', info: {} });
    tally.expect(JSON.stringify([...sub.members.keys()]) === '["ann","ann t2"]', `members ${[...sub.members.keys()]}`);
  });
}
