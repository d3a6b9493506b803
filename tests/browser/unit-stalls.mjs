// Unit checks of web/stalls.js, the page's stall and co-stall counting, on
// the same cases as the bench's (bench/src/hol/analysis.rs): the page and
// BENCHMARKS.md §6 must count the same thing.

import { coStalls, stallOf, summarise } from '../../web/stalls.js';

/** The stalls of per-lane arrival times (ms), interval `iv`. */
function stallsOf(arrivals, iv) {
  const out = [];
  for (const [lane, times] of Object.entries(arrivals)) {
    let prev = null;
    for (const at of times) {
      const s = stallOf(lane, prev, at, iv);
      if (s) out.push(s);
      prev = at;
    }
  }
  return out;
}

export async function runStallsUnit(tally) {
  await tally.check('unit stalls: one held segment stalls every lane at once (co-stall 2 of 2)', () => {
    const s = stallsOf({ a: [20, 40, 150, 150], b: [20, 40, 150, 150] }, 20);
    tally.expect(s.length === 2, `${s.length} stalls: ${JSON.stringify(s)}`);
    tally.expect(s.every((x) => x.from === 100 && x.to === 150), JSON.stringify(s));
    tally.expect(JSON.stringify(coStalls(s)) === '[2,2]', JSON.stringify(coStalls(s)));
    const sum = summarise(s);
    tally.expect(sum.stalls === 2 && sum.coStallMean === 2 && sum.coStallMax === 2 && sum.shared === 2, JSON.stringify(sum));
  });

  await tally.check('unit stalls: independent stalls count one each; overlapping ones count each other', () => {
    // a held 80..140; b held 100..200 (overlaps a); c held 360..400, alone.
    const s = stallsOf({ a: [20, 140], b: [20, 40, 200], c: [300, 400] }, 20);
    tally.expect(s.length === 3, `${s.length} stalls: ${JSON.stringify(s)}`);
    const co = coStalls(s).sort();
    tally.expect(JSON.stringify(co) === '[1,2,2]', JSON.stringify(co));
    const sum = summarise(s);
    tally.expect(sum.shared === 2 && sum.coStallMax === 2 && Math.abs(sum.coStallMean - 5 / 3) < 1e-9, JSON.stringify(sum));
  });

  await tally.check('unit stalls: exactly 3 intervals is on time, a first arrival is never a stall, no stall has no co-stall figure', () => {
    tally.expect(stallOf('a', 100, 160, 20) === null, 'a 60 ms gap at 20 ms counted as a stall');
    tally.expect(stallOf('a', 100, 161, 20)?.from === 160, 'a 61 ms gap not counted');
    tally.expect(stallOf('a', null, 5000, 20) === null, 'the first arrival counted as a stall');
    const sum = summarise([]);
    tally.expect(sum.stalls === 0 && sum.coStallMean === null && sum.coStallMax === null, JSON.stringify(sum));
  });
}
