// duplex.js: what the two duplex rungs (WebSocket, WebTransport) share:
// request/response bookkeeping by `id` (publish, echo) with a timeout on
// each request, the liveness echo (the client's heartbeat), and the routing
// of the server's operations to the client.

/** Routes one server→client operation (WebSocket frame or WebTransport line). */
export function dispatchOp(ladder, tr, op) {
  switch (op.op) {
    case 'message': ladder._message(op, null); break;
    case 'subscribed':
      ladder._subscribed(op.channel, op.epoch, Number(op.offset));
      if (op.presence_error) ladder._sub(op.channel)?._presenceRefused(op.presence_error);
      break;
    case 'presence': ladder._sub(op.channel)?._presenceList(op.members); break;
    case 'join': case 'leave': ladder._sub(op.channel)?._presenceChange(op.op, op.member); break;
    case 'truncated': ladder._truncated(op.channel, op.oldest, op.epoch); break;
    case 'published': case 'presence_joined': case 'presence_left': tr._settle(op.id, null, op); break;
    case 'echo': tr._settle(op.id ?? op.data?.id, null, op); break;
    case 'lagged': ladder._lagged(op.channel); break;
    case 'unsubscribed': break;
    case 'error':
      if (op.id !== undefined && tr._settle(op.id, Object.assign(new Error(`${op.code}: ${op.message}`), { code: op.code }))) break;
      ladder.emit('error', new Error(`${op.code}: ${op.message}`));
      break;
    default: break;
  }
}

export function subscribeOp(sub, extra = {}) {
  const op = { op: 'subscribe', channel: sub.channel, ...sub.presenceOp(), ...extra };
  if (sub.cursor.offset !== null) op.since = sub.cursor.offset;
  if (sub.cursor.epoch !== null) op.epoch = sub.cursor.epoch;
  return op;
}

/** Shared request/response bookkeeping for the two duplex rungs. */
export class Duplex {
  constructor(ladder, info) {
    this.ladder = ladder;
    this.info = info;
    this._pending = new Map();
    this._nextId = 1;
    this.closed = false;
  }
  _settle(id, err, value) {
    const p = this._pending.get(id);
    if (!p) return false;
    this._pending.delete(id);
    this.ladder.clock.clearTimeout(p.timer);
    if (err) p.reject(err); else p.resolve(value);
    return true;
  }
  _request(op) {
    const id = `c${this._nextId++}`;
    return new Promise((resolve, reject) => {
      const timer = this.ladder.clock.setTimeout(() => this._settle(id, new Error(`${op.op} timed out`)), this.ladder.options.publishTimeoutMs);
      this._pending.set(id, { resolve, reject, timer });
      Promise.resolve(this._send({ ...op, id })).catch((e) => this._settle(id, e));
    });
  }
  async publish(channel, data, key) {
    const op = { op: 'publish', channel, data };
    if (key) op.idempotency_key = key;
    const r = await this._request(op);
    return { channel: r.channel, epoch: r.epoch, offset: r.offset };
  }
  /** Joins a channel's presence as one tab (`presence_join`); rejects with the server's refusal. */
  presenceJoin({ channel, tab, client, info }) {
    const op = { op: 'presence_join', channel, tab };
    if (client) op.client = client;
    if (info) op.info = info;
    return this._request(op);
  }
  /** Ends what presenceJoin joined. */
  presenceLeave(channel, tab) { return this._request({ op: 'presence_leave', channel, tab }); }
  _failAll(reason) {
    for (const id of [...this._pending.keys()]) this._settle(id, new Error(reason));
  }
  /**
   * The heartbeat this side sends: an echo every `livenessEveryMs()` (the
   * server's heartbeat when shorter than `livenessMs`) that must be
   * answered within `livenessTimeoutMs`. One unanswered echo ends the
   * connection at once, where a dead server or a NAT that forgot the flow
   * would otherwise leave it silent until a transport timeout. The echo
   * also keeps the flow busy for NATs and proxies in between. Timers run
   * on the client's clock, so tests drive them on a manual one.
   */
  _startLiveness() {
    const every = this.ladder.livenessEveryMs();
    if (!(every > 0)) return;
    const tick = () => {
      this._liveness = this.ladder.clock.setTimeout(tick, every);
      this._checkAlive();
    };
    this._liveness = this.ladder.clock.setTimeout(tick, every);
  }

  _stopLiveness() {
    if (this._liveness !== undefined) this.ladder.clock.clearTimeout(this._liveness);
    this._liveness = undefined;
  }

  /** Echoes once; no answer in time means the connection is dead. */
  async _checkAlive() {
    if (this.closed || this._checking) return;
    this._checking = true;
    const id = `live${this._nextId++}`;
    const answered = new Promise((resolve, reject) => {
      const timer = this.ladder.clock.setTimeout(
        () => this._settle(id, Object.assign(new Error('no answer to a liveness echo'), { silent: true })),
        this.ladder.options.livenessTimeoutMs,
      );
      this._pending.set(id, { resolve, reject, timer });
    });
    try {
      await this._send({ op: 'echo', data: { id } });
      await answered;
    } catch (err) {
      const reason = `${this.name} unresponsive: ${err?.message || err}`;
      if (err?.silent) this._silent(reason); else this._lost(reason);
    } finally {
      this._checking = false;
    }
  }

  /**
   * The connection is up but nothing comes back. By default a drop: over
   * QUIC a server that died looks the same (UDP brings no reset), and a
   * restarted server must not make the client avoid the rung.
   */
  _silent(reason) { this._lost(reason); }

  _lost(reason) {
    this._stopLiveness();
    if (this.closed) return;
    this.closed = true;
    this._failAll(reason);
    this.ladder._transportClosed(this, reason);
  }
}
