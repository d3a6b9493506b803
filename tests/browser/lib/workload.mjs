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
