// Node `ws` 8 peer for ladder-bench: speaks the subset of Ladder's
// WebSocket ops the bench uses (subscribe, publish with ack), on any path.
// Each message is serialised once and sent to every subscriber of its
// channel with one ws.send() each — the idiomatic `ws` broadcast.
// Run: PORT=9001 node ws-server.js
'use strict';
const { WebSocketServer } = require('ws');

const port = Number(process.env.PORT || 9001);
const channels = new Map(); // name -> { offset, subs: Set<WebSocket> }
const chan = (name) => {
  let c = channels.get(name);
  if (!c) channels.set(name, (c = { offset: 0, subs: new Set() }));
  return c;
};

const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false });
wss.on('connection', (ws) => {
  const mine = new Set();
  ws.on('message', (raw) => {
    let op;
    try { op = JSON.parse(raw); } catch { return; }
    if (op.op === 'subscribe') {
      const c = chan(op.channel);
      c.subs.add(ws);
      mine.add(c);
      ws.send(JSON.stringify({ op: 'subscribed', channel: op.channel, epoch: 'e', offset: c.offset }));
    } else if (op.op === 'publish') {
      const c = chan(op.channel);
      const offset = ++c.offset;
      const frame = JSON.stringify({ op: 'message', channel: op.channel, offset, data: op.data, ts: Date.now() });
      for (const s of c.subs) s.send(frame);
      ws.send(JSON.stringify({ op: 'published', id: op.id, channel: op.channel, epoch: 'e', offset }));
    }
  });
  ws.on('close', () => { for (const c of mine) c.subs.delete(ws); });
  ws.on('error', () => {});
});
