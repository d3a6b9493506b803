// leader.js: shared mode without SharedWorker. The tabs of a group elect
// one leader with the Web Locks API: every tab asks for the same exclusive
// lock, the browser grants it to one, and when that tab closes (or
// crashes) the browser releases it and grants it to the next tab waiting.
// The leader runs the SharedHost; the others reach it over a
// BroadcastChannel:
//
//   {k:'up', tab, body}     a tab's message for the host
//   {k:'down', tab, body}   the host's message for one tab
//   {k:'leader', id}        "I lead now" (also the answer to 'who')
//   {k:'who'}               a tab that just joined asks who leads
//
// A tab that learns of a new leader sends it everything again (its
// options and every subscription at its cursor), so a takeover resumes
// each tab where it was. `env` supplies BroadcastChannel and
// navigator.locks, so Node tests can run several "tabs" in one process.

export class Election {
  constructor({ env, name, tabId, onMessage, onLeader, makeHost }) {
    this.env = env;
    this.name = name;
    this.tabId = tabId;
    this.onMessage = onMessage;
    this.onLeader = onLeader;
    this.makeHost = makeHost;
    this.host = null;
    this.leaderId = null;
    this.bc = null;
    this._release = null;
    this._stopped = false;
  }

  /** Joins: listens on the channel, queues for the lock, asks who leads. */
  start() {
    this.bc = new this.env.BroadcastChannel(this.name);
    this.bc.onmessage = (e) => this._onBroadcast(e.data);
    const held = new Promise((resolve) => { this._release = resolve; });
    this.env.navigator.locks.request(`${this.name}:leader`, { mode: 'exclusive' }, () => {
      if (this._stopped) return undefined;
      this._lead();
      // Held until this tab stops (or the browser drops it with the tab).
      return held;
    }).catch(() => {});
    this.bc.postMessage({ k: 'who' });
  }

  /** Sends a tab message to the host, wherever it runs. */
  send(msg) {
    if (this._stopped) return;
    if (this.host) this.host.receive(this.tabId, msg);
    else this.bc.postMessage({ k: 'up', tab: this.tabId, body: msg });
  }

  _lead() {
    this.host = this.makeHost();
    // Asynchronous like the channel, so the leader's own tab sees the same
    // ordering as the others.
    this.host.attach(this.tabId, (m) => queueMicrotask(() => this.onMessage(m)));
    this.leaderId = this.tabId;
    this.bc.postMessage({ k: 'leader', id: this.tabId });
    this.onLeader(true);
  }

  _onBroadcast(d) {
    if (this._stopped || !d) return;
    if (d.k === 'up' && this.host) {
      this.host.attach(d.tab, (m) => this.bc.postMessage({ k: 'down', tab: d.tab, body: m }));
      this.host.receive(d.tab, d.body);
    } else if (d.k === 'down' && !this.host && d.tab === this.tabId) {
      this.onMessage(d.body);
    } else if (d.k === 'leader' && !this.host && d.id !== this.leaderId) {
      this.leaderId = d.id;
      this.onLeader(false);
    } else if (d.k === 'who' && this.host) {
      this.bc.postMessage({ k: 'leader', id: this.tabId });
    }
  }

  /** Leaves the group; a leader releases the lock, so another tab takes over. */
  stop() {
    this._stopped = true;
    this.host?.close();
    this.host = null;
    this._release?.();
    this.bc?.close();
  }
}
