// The trivial Node `http` handler the empty short-poll / long-poll rate is
// compared with: every request gets the body of an empty Ladder poll.
// Run: PORT=9003 node http-server.js
'use strict';
const http = require('node:http');

const port = Number(process.env.PORT || 9003);
const body = JSON.stringify({ channel: 'c', epoch: 'e', messages: [], next: 0 });
http
  .createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  })
  .listen(port, '127.0.0.1');
