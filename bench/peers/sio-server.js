// Socket.IO 4.8 peer for ladder-bench: rooms as channels, WebSocket
// transport only (no long-polling upgrade dance), no compression.
//   subscribe {channel}        -> join the room, ack {ok}
//   publish {channel, data}    -> emit "message" {channel, offset, data, ts}
//                                 to the room, ack {offset}
// Run: PORT=9002 node sio-server.js
'use strict';
const { Server } = require('socket.io');

const port = Number(process.env.PORT || 9002);
const offsets = new Map();
const httpServer = require('node:http').createServer();
const io = new Server(httpServer, { transports: ['websocket'], perMessageDeflate: false, serveClient: false });
io.on('connection', (socket) => {
  socket.on('subscribe', (arg, ack) => {
    socket.join(arg.channel);
    if (typeof ack === 'function') ack({ ok: true });
  });
  socket.on('publish', (arg, ack) => {
    const offset = (offsets.get(arg.channel) || 0) + 1;
    offsets.set(arg.channel, offset);
    io.to(arg.channel).emit('message', { channel: arg.channel, offset, data: arg.data, ts: Date.now() });
    if (typeof ack === 'function') ack({ offset });
  });
});
httpServer.listen(port, '127.0.0.1');
