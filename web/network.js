// network.js: the page's Network choice, when the server runs the network
// lab beside itself (`ladder --lab`; /api/info lists the conditions).
//
// Each condition is a pair of relays with ports of their own, so choosing
// one opens this same page through its HTTP relay: everything the page
// loads and every rung's connection then crosses that network, and each
// condition is its own origin (the automatic client's memory of winners
// and silent rungs is kept per origin, as on real networks). WebTransport
// goes to the condition's UDP relay. The workload's publisher talks to the
// server directly, over a WebSocket of its own: the networks under test
// are the subscribers', and a publish cut by a network switch would leave
// the run unable to tell a lost message from an unsent one.

/**
 * The lab condition this page was opened through, or null (direct, or no
 * lab). The choice's link also names it in the query, because behind
 * `round-robin` the page may come from the other node, whose /api/info
 * knows nothing of this lab.
 */
export function currentNetwork(info) {
  const found = info.lab?.conditions?.find((c) => c.http === location.origin);
  if (found) return { ...found, direct: info.lab.direct };
  const q = new URLSearchParams(location.search);
  if (q.get('network') && q.get('wt_url') && q.get('direct')) {
    return { name: q.get('network'), http: location.origin, webtransport: q.get('wt_url'), description: '', direct: q.get('direct') };
  }
  return null;
}

/** The page's address through condition `c` of `lab`. */
export function networkUrl(lab, c) {
  const q = new URLSearchParams({ network: c.name, wt_url: c.webtransport, direct: lab.direct });
  return `${c.http}/?${q}`;
}

/** Options every client on the page takes to reach the server through `network`. */
export function networkOptions(network) {
  return network ? { wtUrl: network.webtransport } : {};
}

/**
 * Fills the Network choice. Choosing navigates to the condition's origin;
 * the switch button (network-switch only) pulls the lab's lever on the
 * server directly, since the request through the relay would itself be cut.
 */
export function renderNetworkChoice(info, network, root) {
  if (!info.lab) {
    // Served by round-robin's other node: name the network, offer no choice.
    if (network) {
      root.hidden = false;
      root.querySelector('#network-choice').hidden = true;
      root.querySelector('#network-desc').textContent = `Network: ${network.name}.`;
    }
    return;
  }
  root.hidden = false;
  const select = root.querySelector('#network-choice');
  const add = (value, text, disabled = false, title = '') => {
    const o = document.createElement('option');
    o.value = value;
    o.textContent = text;
    o.disabled = disabled;
    if (title) o.title = title;
    select.append(o);
  };
  add(`${info.lab.direct}/`, 'direct (no condition)');
  for (const c of info.lab.conditions) add(networkUrl(info.lab, c), c.name);
  for (const u of info.lab.unavailable) add('', `${u.name} (not offered)`, true, u.reason);
  select.value = network ? networkUrl(info.lab, info.lab.conditions.find((c) => c.name === network.name) || network) : `${info.lab.direct}/`;
  select.addEventListener('change', () => { if (select.value) location.href = select.value; });
  root.querySelector('#network-desc').textContent = network
    ? network.description
    : `Direct to the server. ${info.lab.unavailable.map((u) => `${u.name}: ${u.reason}`).join(' ')}`;
  const button = root.querySelector('#network-switch');
  if (network?.name.split('+').includes('network-switch')) {
    button.hidden = false;
    button.addEventListener('click', () => switchNetwork(network.direct));
  }
}

/** Pulls the lab's network-switch lever (cross-origin, so the answer is opaque). */
export function switchNetwork(direct) {
  return fetch(`${direct}/api/lab/switch`, { method: 'POST', mode: 'no-cors' });
}

/**
 * The workload's publish function: over the page's own origin without a
 * lab condition, else over a WebSocket straight to the server (a plain
 * one: a client would first fetch /api/info, which is cross-origin here),
 * each publish acknowledged by its `id`.
 */
export async function makePublisher(network, httpPublish) {
  if (!network) return (channel, data) => httpPublish(location.origin, channel, data);
  const url = new URL('/api/ws', network.direct);
  url.protocol = 'ws:';
  const ws = new WebSocket(url);
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = () => reject(new Error(`cannot reach ${url} to publish`));
  });
  const pending = new Map();
  ws.onmessage = (ev) => {
    let op;
    try { op = JSON.parse(ev.data); } catch { return; }
    const p = pending.get(op.id);
    if (!p) return;
    pending.delete(op.id);
    if (op.op === 'published') p.resolve(op); else p.reject(new Error(`${op.code}: ${op.message}`));
  };
  ws.onclose = () => { for (const p of pending.values()) p.reject(new Error('the publishing WebSocket closed')); pending.clear(); };
  let next = 0;
  return (channel, data) => new Promise((resolve, reject) => {
    const id = `p${++next}`;
    pending.set(id, { resolve, reject });
    ws.send(JSON.stringify({ op: 'publish', id, channel, data }));
  });
}
