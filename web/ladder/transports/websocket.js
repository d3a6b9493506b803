// websocket.js: the WebSocket rung — one socket to /api/ws carrying the
// contract's JSON operations both ways, with the liveness echo (the
// browser cannot see the server's WebSocket pings, so it sends its own).

import { Duplex, dispatchOp, subscribeOp } from './duplex.js';

export class WebSocketTransport extends Duplex {
  get name() { return 'websocket'; }

  open() {
    const url = new URL(this.ladder.options.wsUrl || '/api/ws', this.ladder.options.base);
    if (url.protocol === 'https:') url.protocol = 'wss:';
    else if (url.protocol === 'http:') url.protocol = 'ws:';
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url.toString());
      this.ws = ws;
      let opened = false;
      ws.onopen = () => { opened = true; this._startLiveness(); resolve(); };
      ws.onerror = () => { if (!opened) reject(new Error('WebSocket handshake failed')); };
      ws.onclose = (ev) => {
        if (!opened) { reject(new Error(`WebSocket closed before opening (code ${ev.code})`)); return; }
        this._lost(`WebSocket closed (code ${ev.code}${ev.reason ? `, ${ev.reason}` : ''})`);
      };
      ws.onmessage = (ev) => {
        if (typeof ev.data !== 'string') return;
        let op;
        try { op = JSON.parse(ev.data); } catch { return; }
        dispatchOp(this.ladder, this, op);
      };
    });
  }
  _send(op) {
    if (this.ws?.readyState !== WebSocket.OPEN) throw new Error('WebSocket not open');
    this.ws.send(JSON.stringify(op));
  }
  subscribe(sub) { try { this._send(subscribeOp(sub)); } catch { /* resubscribed on reconnect */ } }
  unsubscribe(channel) { try { this._send({ op: 'unsubscribe', channel }); } catch { /* gone anyway */ } }
  /**
   * An open socket whose echo goes unanswered: a NAT that forgot the
   * mapping without a reset, a middlebox holding frames. A server that
   * died closes the TCP connection instead (onclose), so silence here is
   * the network's: remembered per origin, like a race's winner, and the
   * reconnect races the other rungs.
   */
  _silent(reason) {
    this.ladder._giveUpSilent(this, reason);
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, 'silent');
  }

  close() {
    this._stopLiveness();
    this.closed = true;
    this._failAll('closed');
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, 'client closed');
  }
}
