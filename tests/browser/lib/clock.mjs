// Test doubles for the unit checks: a manual clock for the client's
// injected `clock` option, rungs, /api/info and localStorage. The clock: time moves only
// when a test calls `advance`, which fires due timers in time order and
// lets the promise callbacks they cause run before the next one. No real
// timers, so no test here depends on how fast the machine is.

/** Lets every queued promise callback run (setImmediate runs after the microtask queue drains). */
export async function settle() {
  for (let i = 0; i < 3; i++) await new Promise((resolve) => setImmediate(resolve));
}

export class ManualClock {
  #now = 0;
  #timers = new Map();
  #nextId = 1;

  now() { return this.#now; }

  setTimeout(fn, ms) {
    const id = this.#nextId++;
    this.#timers.set(id, { at: this.#now + Math.max(0, Number(ms) || 0), fn });
    return id;
  }

  clearTimeout(id) { this.#timers.delete(id); }

  /** Timers set and not yet fired or cleared. */
  get pending() { return this.#timers.size; }

  /** Moves time forward by `ms`, firing every timer due on the way (at most 10 000). */
  async advance(ms) {
    const target = this.#now + ms;
    await settle();
    for (let fired = 0; ; fired++) {
      if (fired >= 10000) throw new Error('ManualClock: more than 10 000 timers fired in one advance');
      let due = null;
      for (const [id, t] of this.#timers) {
        if (t.at <= target && (due === null || t.at < due.t.at)) due = { id, t };
      }
      if (!due) break;
      this.#timers.delete(due.id);
      this.#now = due.t.at;
      due.t.fn();
      await settle();
    }
    this.#now = target;
    await settle();
  }

  /** Moves time forward to `at` (ms since the clock's start). */
  advanceTo(at) { return this.advance(Math.max(0, at - this.#now)); }
}

/**
 * A test-double rung on a manual clock. `plan`: `opensIn` (ms until ready)
 * or `failsIn` (ms until it fails with `error`); neither = never ready.
 * `lingers`: closing it does not cancel its handshake (it may still report
 * ready later, as a real handshake already in flight can). Each instance
 * records when it started and whether it was closed.
 */
export function fakeRung(name, clock, plan = {}, log = []) {
  return class FakeRung {
    constructor(ladder) {
      this.ladder = ladder;
      this.name = name;
      this.closed = false;
      this.closes = 0;
      this.startedAt = null;
      this.subscribed = [];
      this.timer = null;
      log.push(this);
    }
    open() {
      this.startedAt = clock.now();
      return new Promise((resolve, reject) => {
        if (plan.opensIn !== undefined) this.timer = clock.setTimeout(resolve, plan.opensIn);
        else if (plan.failsIn !== undefined) this.timer = clock.setTimeout(() => reject(new Error(plan.error || 'refused')), plan.failsIn);
      });
    }
    subscribe(sub) { this.subscribed.push({ channel: sub.channel, epoch: sub.cursor.epoch, offset: sub.cursor.offset }); }
    unsubscribe() {}
    close() {
      this.closed = true;
      this.closes++;
      if (!plan.lingers) clock.clearTimeout(this.timer);
    }
  };
}

/** What /api/info says in the unit checks: every rung offered. */
export const INFO = {
  version: 'test',
  transports: ['webtransport', 'websocket', 'sse', 'longpoll', 'poll'],
  webtransport: { url: 'https://127.0.0.1:1/wt', cert_sha256: 'ab'.repeat(32) },
};

/** A `fetch` that answers every request with `info`. */
export function fakeFetch(info = INFO) {
  return async () => ({ ok: true, status: 200, json: async () => info });
}

/** An in-memory `localStorage`. */
export function memoryStorage() {
  const m = new Map();
  return { getItem: (k) => (m.has(k) ? m.get(k) : null), setItem: (k, v) => m.set(k, String(v)), removeItem: (k) => m.delete(k) };
}
