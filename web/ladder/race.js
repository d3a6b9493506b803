// race.js: the fallback race. The first rung of the order starts alone; if
// it is not ready within `raceDelayMs`, the others start too, `staggerMs`
// apart, so the better rung wins a near tie. The first rung ready wins and
// every other one is closed. A rung that fails early does not end the race:
// when nothing is left in flight, the next rung starts at once. The race
// ends with an error when every rung has failed, or at the deadline
// (`probeTimeoutMs` plus one stagger per rung) if none was ready by then.
//
// The race knows nothing of the network: it opens rungs through `make` and
// reads time from an injected clock (`now`, `setTimeout`, `clearTimeout`),
// so its tests drive it with a manual clock and test-double rungs.

import { describe, realClock } from './util.js';

/**
 * The order to race `offered` (best first) in: a remembered winner goes
 * first, so a network where the best rung is known not to work sees no
 * wait; the others keep their order.
 */
export function raceOrder(offered, remembered) {
  if (!remembered || !offered.includes(remembered)) return [...offered];
  return [remembered, ...offered.filter((n) => n !== remembered)];
}

export class Race {
  #order;
  #make;
  #clock;
  #timing;
  #remembered;
  /** Rungs started and not yet ready or failed, by name. */
  #live = new Map();
  #started = 0;
  #failures = 0;
  #timers = [];
  #t0 = 0;
  /** Set once, by #end: later events only close what they opened. */
  #ended = false;
  #settle = null;

  /**
   * `order`: rung names, first choice first (see `raceOrder`). `make(name)`
   * returns a transport with `open()` (a promise, resolved when ready) and
   * `close()`. `losers`: rungs already out of the race, with the reason.
   */
  constructor({ order, make, clock = realClock, raceDelayMs, staggerMs, probeTimeoutMs, remembered = null, losers = {} }) {
    if (order.length === 0) throw new Error('a race needs at least one rung');
    this.#order = order;
    this.#make = make;
    this.#clock = clock;
    this.#timing = { raceDelayMs, staggerMs, probeTimeoutMs };
    this.#remembered = remembered;
    /** Which rung won and why each of the others lost; complete once `run()` settles. */
    this.report = { winner: null, reason: '', losers: { ...losers }, startedAt: Date.now(), elapsedMs: null };
  }

  /** The longest a race can take: the deadline after which it fails. */
  get deadlineMs() {
    const { probeTimeoutMs, staggerMs } = this.#timing;
    return probeTimeoutMs + this.#order.length * staggerMs;
  }

  /** Runs the race once. Resolves with the ready winner, or rejects with why nothing won. */
  run() {
    if (this.#settle) throw new Error('a race runs once');
    const done = new Promise((resolve, reject) => { this.#settle = { resolve, reject }; });
    this.#t0 = this.#clock.now();
    const { raceDelayMs, staggerMs } = this.#timing;
    this.#startNext();
    for (let i = 1; i < this.#order.length; i++) this.#at(raceDelayMs + (i - 1) * staggerMs, () => this.#startNext());
    this.#at(this.deadlineMs, () => this.#deadline());
    return done;
  }

  #at(ms, fn) { this.#timers.push(this.#clock.setTimeout(fn, ms)); }

  #elapsed() { return Math.round(this.#clock.now() - this.#t0); }

  #startNext() {
    if (this.#ended || this.#started >= this.#order.length) return;
    const name = this.#order[this.#started++];
    const tr = this.#make(name);
    this.#live.set(name, tr);
    let opening;
    try { opening = Promise.resolve(tr.open()); } catch (err) { opening = Promise.reject(err); }
    opening.then(() => this.#ready(name, tr), (err) => this.#failed(name, err));
  }

  #ready(name, tr) {
    const ms = this.#elapsed();
    this.#live.delete(name);
    const losers = this.report.losers;
    if (this.#ended) {
      if (this.report.winner) losers[name] = `ready after ${ms} ms, later than ${this.report.winner}`;
      tr.close();
      return;
    }
    this.report.winner = name;
    this.report.elapsedMs = ms;
    this.report.reason = this.#order.length === 1 ? `only candidate, ready in ${ms} ms`
      : name === this.#order[0] && this.#started === 1 ? `first choice${this.#remembered === name ? ' (remembered)' : ''}, ready in ${ms} ms`
        : `first ready, in ${ms} ms`;
    for (const other of this.#live.keys()) losers[other] = `not ready after ${ms} ms, when ${name} was`;
    for (const later of this.#order.slice(this.#started)) losers[later] = `not tried: ${name} was ready first`;
    this.#end({ winner: tr, report: this.report });
  }

  #failed(name, err) {
    this.#live.delete(name);
    if (this.#ended) return; // closed because the race was over
    this.report.losers[name] = `failed after ${this.#elapsed()} ms: ${describe(err)}`;
    this.#failures++;
    if (this.#failures === this.#order.length) {
      const why = this.#order.map((n) => `${n}: ${this.report.losers[n]}`).join('; ');
      this.#end(null, new Error(`every rung failed (${why})`));
    } else if (this.#live.size === 0) {
      this.#startNext(); // nothing left in flight: start the next rung now
    }
  }

  #deadline() {
    const { probeTimeoutMs } = this.#timing;
    for (const name of this.#live.keys()) this.report.losers[name] = `not ready within ${probeTimeoutMs} ms`;
    for (const later of this.#order.slice(this.#started)) this.report.losers[later] = 'not tried: the race timed out';
    this.#end(null, new Error(`no rung ready within ${this.deadlineMs} ms`));
  }

  /** The one exit: stops the timers, closes every rung still in flight, settles. */
  #end(won, err = null) {
    this.#ended = true;
    for (const t of this.#timers) this.#clock.clearTimeout(t);
    this.#timers = [];
    for (const tr of this.#live.values()) tr.close();
    this.#live.clear();
    if (err) {
      this.report.reason = err.message;
      this.#settle.reject(err);
    } else {
      this.#settle.resolve(won);
    }
  }
}
