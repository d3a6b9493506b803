// realities.js: the comparison's "through each network" table, the
// background's "Implementation realities" with measured cells. For each
// condition the lab offers, a frame opens ./probe.html through it (its own
// origin, so the probe's every request crosses that network); the probe's
// automatic client runs a workload and posts back what it got. One
// condition at a time, so the measurements do not share the machine.
// Through nat-timeout the workload idles longer than the NAT's timeout, and
// every rung is measured through that idle too (a row each, under it).

import { networkUrl } from './network.js';
import { fmtMs } from './figures.js';

/** How long one condition may take (race, workload, drain) before its row says so. */
const PROBE_TIMEOUT_MS = 90000;

/**
 * Fills `root` (#networks-measured) when `info` lists a lab; `state`
 * mirrors the rows. `only` (names) limits which conditions are measured.
 */
export function setupRealities(root, info, state, { staggerMs = null, only = null } = {}) {
  const lab = info.lab;
  Object.assign(state, { state: 'idle', rows: {} });
  if (!lab) return;
  root.hidden = false;
  const tbody = root.querySelector('tbody');
  const button = root.querySelector('#networks-run');
  const statusEl = root.querySelector('#networks-status');
  const rows = {};
  for (const c of lab.conditions) {
    const tr = document.createElement('tr');
    tr.dataset.condition = c.name;
    const th = document.createElement('th');
    th.scope = 'row';
    th.textContent = c.name;
    th.title = c.description;
    tr.append(th);
    for (let i = 0; i < 6; i++) tr.append(document.createElement('td'));
    tbody.append(tr);
    rows[c.name] = tr;
  }
  for (const u of lab.unavailable) {
    const tr = document.createElement('tr');
    const th = document.createElement('th');
    th.scope = 'row';
    th.textContent = u.name;
    const td = document.createElement('td');
    td.colSpan = 6;
    td.textContent = `Not offered here: ${u.reason}`;
    tr.append(th, td);
    tbody.append(tr);
  }
  button.addEventListener('click', async () => {
    button.disabled = true;
    state.state = 'running';
    state.rows = {};
    const measured = lab.conditions.filter((c) => !only || only.includes(c.name));
    for (const c of measured) {
      statusEl.textContent = `Measuring ${c.name}…`;
      const result = await probe(root, lab, c, staggerMs);
      state.rows[c.name] = result;
      fill(rows[c.name], result);
    }
    state.state = 'done';
    statusEl.textContent = `Measured ${measured.length} networks.`;
    button.disabled = false;
  });
}

/** Opens the probe through condition `c` and resolves with what it posts back. */
function probe(root, lab, c, staggerMs) {
  const url = new URL(networkUrl(lab, c));
  url.pathname = '/probe.html';
  url.searchParams.set('parent', location.origin);
  if (staggerMs !== null) url.searchParams.set('stagger_ms', String(staggerMs));
  const frame = document.createElement('iframe');
  frame.className = 'probe-frame';
  frame.title = `The automatic client through ${c.name}`;
  frame.src = url.href;
  const origin = new URL(c.http).origin;
  return new Promise((resolve) => {
    let timer = null;
    const done = (result) => {
      clearTimeout(timer);
      window.removeEventListener('message', onMessage);
      frame.remove();
      resolve(result);
    };
    const onMessage = (ev) => {
      if (ev.source === frame.contentWindow && ev.data?.type === 'ladder-probe' && ev.origin === origin) done(ev.data.result);
    };
    window.addEventListener('message', onMessage);
    // Through nat-timeout the workload idles for up to 1.5 times the NAT's timeout (probe.js).
    const limit = PROBE_TIMEOUT_MS + 1.5 * (Number(c.nat_timeout_ms) || 0);
    timer = setTimeout(() => done({ condition: c.name, error: `no result within ${Math.round(limit / 1000)} s` }), limit);
    root.querySelector('#networks-frames').append(frame);
  });
}

function fill(tr, r) {
  const cells = [...tr.querySelectorAll('td')];
  if (r.error) {
    cells[0].textContent = `No: ${r.error}`;
    for (const c of cells.slice(1)) c.textContent = '–';
    tr.dataset.works = 'false';
    return;
  }
  const texts = [
    r.works ? 'Yes' : `No: ${r.lost} of ${r.k} lost, ${r.duplicated} repeated, ${r.outOfOrder} out of order`,
    r.firstChoice ? `WebTransport, ready in ${fmtMs(r.readyMs)}` : `Falls back to ${r.transport} after ${fmtMs(r.readyMs)}`,
    `${fmtMs(r.p50)} / ${fmtMs(r.p99)}`,
    String(r.reconnects),
    String(r.lost),
    String(r.duplicated),
  ];
  texts.forEach((t, i) => { cells[i].textContent = t; });
  tr.dataset.works = String(r.works);
  tr.dataset.transport = r.transport;
  fillRungs(tr, r);
}

/**
 * Under a row whose workload idled (nat-timeout), one row per rung, each
 * forced through the same idle window: whether heartbeats kept its
 * connection alive (reconnects from the idle on), and what it lost or got
 * twice over the whole workload.
 */
function fillRungs(tr, r) {
  for (const old of tr.parentElement.querySelectorAll(`tr[data-under="${CSS.escape(r.condition)}"]`)) old.remove();
  let after = tr;
  for (const [rung, x] of Object.entries(r.rungs || {})) {
    const sub = document.createElement('tr');
    sub.dataset.under = r.condition;
    sub.dataset.rung = rung;
    const th = document.createElement('th');
    th.scope = 'row';
    th.className = 'sub';
    th.textContent = `… ${rung}`;
    const ok = x.lost === 0 && x.duplicated === 0 && x.outOfOrder === 0;
    const texts = [
      ok ? 'Yes' : `No: ${x.lost} lost, ${x.duplicated} repeated, ${x.outOfOrder} out of order`,
      `Forced; reconnects counted from an idle ${fmtMs(r.idleMs)} against a ${fmtMs(r.natTimeoutMs)} NAT`,
      `${fmtMs(x.p50)} / ${fmtMs(x.p99)}`,
      String(x.reconnects),
      String(x.lost),
      String(x.duplicated),
    ];
    sub.append(th, ...texts.map((t) => { const td = document.createElement('td'); td.textContent = t; return td; }));
    after.after(sub);
    after = sub;
  }
}
