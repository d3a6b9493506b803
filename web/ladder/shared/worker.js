// worker.js: the SharedWorker of shared mode. One per group (the worker's
// name); it holds the group's one connection in a SharedHost and talks to
// each tab over that tab's MessagePort ({tab, body} in, body out).

import { Ladder } from '../../ladder.js';
import { SharedHost } from './host.js';

const host = new SharedHost((opts) => new Ladder({ ...opts, shared: false }), { locks: globalThis.navigator?.locks || null });

globalThis.onconnect = (e) => {
  const port = e.ports[0];
  port.onmessage = (ev) => {
    const { tab, body } = ev.data || {};
    if (!tab || !body) return;
    host.attach(tab, (m) => port.postMessage(m));
    host.receive(tab, body);
  };
  port.start();
};
