// The page's workload, driven from a test: fill the form, run, wait, and
// check that every panel got offsets 1..K exactly once, in order.

import { waitState, ladderState } from './harness.mjs';

/** Sets the workload form and clicks Run; resolves when the click is done. */
export async function startRun(page, { k, rate, payload = 64 }) {
  await page.fill('#k', String(k));
  await page.fill('#rate', String(rate));
  await page.fill('#payload', String(payload));
  const before = (await ladderState(page)).run.runs;
  await page.click('#run');
  await waitState(page, 'the run to start', (n) => window.ladderState.run.runs > n, before, 5000);
}

export async function waitRunDone(page, timeoutMs) {
  await waitState(page, 'the run to finish', () => ['done', 'failed'].includes(window.ladderState.run.state), null, timeoutMs);
  return ladderState(page);
}

/** Every expected panel got offsets 1..K, each once, in order. */
export function checkDelivery(st, ids, k) {
  const bad = [];
  for (const id of ids) {
    const p = st.panels[id];
    const problems = [];
    if (p.received !== k) problems.push(`received ${p.received}/${k}`);
    if (p.missing !== 0) problems.push(`${p.missing} missing`);
    if (p.duplicates !== 0) problems.push(`${p.duplicates} duplicates`);
    if (p.outOfOrder !== 0) problems.push(`${p.outOfOrder} out of order`);
    if (problems.length) bad.push(`${id} [${p.transport}]: ${problems.join(', ')}`);
  }
  if (st.run.state !== 'done') bad.push(`run state ${st.run.state} ${st.run.error || ''}`);
  if (bad.length) throw new Error(bad.join('; '));
}

/**
 * What the page shows about HTTP versions once the HTTP rungs have each
 * ended a request: the page's own version (state and the header line), and
 * per rung panel the version in its state, its figure and the comparison
 * table's HTTP row. Throws unless they all say `expected`.
 */
export async function checkShownProtocol(page, expected, { rungs = ['sse', 'longpoll', 'poll'] } = {}) {
  await waitState(page, `panels ${rungs.join(', ')} to report ${expected}`, ({ ids, v }) => ids
    .every((id) => window.ladderState.panels[id]?.http === v), { ids: rungs, v: expected }, 20000);
  const shown = await page.evaluate((ids) => {
    const table = document.querySelector('#summary');
    const heads = [...table.tHead.rows[0].cells].map((c) => c.textContent);
    const row = [...table.tBodies[0].rows].find((r) => r.cells[0].textContent === 'HTTP');
    const titles = Object.fromEntries(ids.map((id) => [id, document.querySelector(`#panel-${id} .panel-title`).textContent]));
    return {
      state: window.ladderState.page.http,
      header: document.querySelector('#page-protocol').textContent,
      corner: heads[0],
      figures: Object.fromEntries(ids.map((id) => [id, document.querySelector(`#panel-${id} [data-role=http]`).textContent])),
      table: row ? Object.fromEntries(ids.map((id) => [id, row.cells[heads.indexOf(titles[id])]?.textContent ?? null])) : null,
      wt: row ? row.cells[heads.indexOf('WebTransport · streams')]?.textContent : null,
    };
  }, rungs);
  const bad = [];
  if (shown.state !== expected) bad.push(`ladderState.page.http ${shown.state}`);
  if (!shown.header.includes(`came over ${expected} `)) bad.push(`header line "${shown.header}"`);
  if (shown.corner !== `Aspect (page over ${expected})`) bad.push(`table corner "${shown.corner}"`);
  if (!shown.table) bad.push('the table has no HTTP row');
  for (const id of rungs) {
    if (!shown.figures[id].startsWith(`${expected} `)) bad.push(`${id} figure "${shown.figures[id]}"`);
    if (shown.table && !String(shown.table[id]).startsWith(`${expected}: `)) bad.push(`${id} table cell "${shown.table[id]}"`);
  }
  if (shown.table && !String(shown.wt).startsWith('h3: ')) bad.push(`WebTransport table cell "${shown.wt}"`);
  if (bad.length) throw new Error(bad.join('; '));
  return `page ${shown.state}; table HTTP row: ${rungs.map((id) => `${id}=${shown.table[id].split(':')[0]}`).join(', ')}`;
}
