// webtransport.js: the WebTransport rung — one bidirectional stream per
// subscription, one control stream for publishes and echoes, datagrams for
// `delivery: 'datagram'`, and the liveness echo (the heartbeat) that ends a
// silent session long before QUIC's idle timeout would.

import { describe, hexToBytes } from '../util.js';
import { Duplex, dispatchOp, subscribeOp } from './duplex.js';

/** Reads newline-delimited JSON from a WebTransport stream, honouring pause. */
class LineStream {
  constructor(stream, onOp, onEnd) {
    this.stream = stream;
    this.writer = stream.writable.getWriter();
    this.reader = stream.readable.getReader();
    this.onOp = onOp;
    this.onEnd = onEnd;
    this.paused = false;
    this._resume = null;
    this.encoder = new TextEncoder();
    this._run();
  }
  async _run() {
    const decoder = new TextDecoder();
    let buf = '';
    try {
      for (;;) {
        await this._whilePaused();
        const { value, done } = await this.reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          await this._whilePaused(); // a pause takes effect between lines
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (!line) continue;
          let op;
          try { op = JSON.parse(line); } catch { continue; }
          this.onOp(op);
        }
      }
      this.onEnd?.(null);
    } catch (err) {
      this.onEnd?.(err);
    }
  }
  async _whilePaused() {
    while (this.paused) await new Promise((r) => { this._resume = r; });
  }
  send(op) { return this.writer.write(this.encoder.encode(`${JSON.stringify(op)}\n`)); }
  pause() { this.paused = true; }
  resume() { this.paused = false; this._resume?.(); this._resume = null; }
  close() {
    this.onEnd = null;
    this.writer.close().catch(() => {});
    this.reader.cancel().catch(() => {});
  }
}

/**
 * WebTransport: one bidirectional stream per subscription (so a stalled
 * channel cannot hold up another), one more for publishes, and the session's
 * datagrams for subscriptions made with `delivery: 'datagram'`.
 */
export class WebTransportTransport extends Duplex {
  get name() { return 'webtransport'; }

  async open() {
    const wt = this.info.webtransport;
    const url = this.ladder.options.wtUrl || wt.url;
    const opts = {};
    if (wt.cert_sha256) {
      opts.serverCertificateHashes = [{ algorithm: 'sha-256', value: hexToBytes(wt.cert_sha256) }];
    }
    let session;
    try {
      session = new WebTransport(url, opts);
    } catch (err) {
      throw new Error(`WebTransport refused: ${describe(err)}`);
    }
    this.session = session;
    this.streams = new Map();
    session.closed.then(
      (info) => this._lost(`WebTransport session closed${info?.reason ? `: ${info.reason}` : ''}`),
      (err) => this._lost(`WebTransport session lost: ${describe(err)}`),
    );
    try {
      await session.ready;
    } catch (err) {
      this.closed = true;
      throw new Error(`WebTransport handshake failed: ${describe(err)}`);
    }
    if (this.closed) throw new Error('WebTransport closed while connecting');
    this._startLiveness();
  }

  async _control() {
    if (!this._controlStream) {
      this._controlStream = this.session.createBidirectionalStream().then((s) => new LineStream(
        s, (op) => dispatchOp(this.ladder, this, op), (err) => { if (err) this._lost(`control stream failed: ${describe(err)}`); },
      ));
    }
    return this._controlStream;
  }

  async _send(op) { (await this._control()).send(op); }

  async subscribe(sub) {
    const channel = sub.channel;
    const extra = sub.delivery === 'datagram' ? { delivery: 'datagram' } : {};
    if (sub.delivery === 'datagram') this._readDatagrams();
    try {
      const stream = await this.session.createBidirectionalStream();
      if (this.closed || this.ladder._sub(channel) !== sub) { stream.writable.close().catch(() => {}); return; }
      const ls = new LineStream(stream, (op) => dispatchOp(this.ladder, this, op), (err) => {
        if (this.streams.get(channel) === ls) this.streams.delete(channel);
        if (err && !this.closed) this._lost(`stream for ${channel} failed: ${describe(err)}`);
      });
      this.streams.set(channel, ls);
      if (sub.paused) ls.pause();
      await ls.send(subscribeOp(sub, extra));
    } catch (err) {
      if (!this.closed) this._lost(`could not open a stream for ${channel}: ${describe(err)}`);
    }
  }

  unsubscribe(channel) {
    const ls = this.streams.get(channel);
    if (!ls) return;
    this.streams.delete(channel);
    ls.send({ op: 'unsubscribe', channel }).catch(() => {});
    ls.close();
  }

  pause(channel) { this.streams.get(channel)?.pause(); }
  resume(channel) { this.streams.get(channel)?.resume(); }

  async _readDatagrams() {
    if (this._datagrams) return;
    this._datagrams = true;
    const reader = this.session.datagrams.readable.getReader();
    const decoder = new TextDecoder();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        let op;
        try { op = JSON.parse(decoder.decode(value)); } catch { continue; }
        if (op.op === 'message') this.ladder._message(op, null, 'datagram');
        else dispatchOp(this.ladder, this, op);
      }
    } catch { /* the session's closed promise reports the loss */ }
  }

  /** Sends `{"op":"echo"}` as a datagram and waits for it to come back. */
  async echoDatagram(data) {
    this._readDatagrams();
    const id = `d${this._nextId++}`;
    const writer = this.session.datagrams.writable.getWriter();
    const p = new Promise((resolve, reject) => {
      const timer = this.ladder.clock.setTimeout(() => this._settle(id, new Error('datagram echo timed out')), 2000);
      this._pending.set(id, { resolve, reject, timer });
    });
    await writer.write(new TextEncoder().encode(JSON.stringify({ op: 'echo', id, data: { id, ...data } })));
    writer.releaseLock();
    return p;
  }

  close() {
    this._stopLiveness();
    if (this.closed) return;
    this.closed = true;
    this._failAll('closed');
    try { this.session?.close({ closeCode: 0, reason: 'client closed' }); } catch { /* already closed */ }
  }
}
