// stalls.js: the head-of-line figures of the page's lanes, with the same
// definitions as the bench (bench/src/hol/analysis.rs), so the page and
// BENCHMARKS.md §6 count the same thing.
//
// - A stall is an arrival more than 3 × the publish interval after the
//   previous arrival on the same lane. Its held window runs from 3 × the
//   interval after that previous arrival to the arrival.
// - A stall's co-stall is the number of lanes of the same connection (itself
//   included) whose held windows overlap its own: how many lanes one loss
//   held up at once. One lost TCP segment holds every channel queued behind
//   it, so on one WebSocket it tends to the number of lanes; a lost QUIC
//   packet holds only the stream whose data it carried, so there it tends
//   to 1.
//
// Pure functions over numbers (milliseconds): no clock, no DOM.

/** How many publish intervals of silence make a stall. */
export const STALL_INTERVALS = 3;

/**
 * The stall an arrival at `at` ends on `lane`, if the previous arrival was
 * at `prevAt` (null for the lane's first arrival): `{ lane, from, to }`, or
 * null when it came in time.
 */
export function stallOf(lane, prevAt, at, intervalMs) {
  if (prevAt === null || prevAt === undefined) return null;
  const threshold = STALL_INTERVALS * intervalMs;
  return at - prevAt > threshold ? { lane, from: prevAt + threshold, to: at } : null;
}

/** The co-stall of every stall in `stalls` (one connection's), in order. */
export function coStalls(stalls) {
  return stalls.map((s) => {
    const held = new Set();
    for (const o of stalls) if (o.from < s.to && s.from < o.to) held.add(o.lane);
    return held.size;
  });
}

/**
 * One connection's counter: stall events, their mean and largest co-stall
 * (null without stalls), and how many held more than one lane.
 */
export function summarise(stalls) {
  const co = coStalls(stalls);
  if (co.length === 0) return { stalls: 0, coStallMean: null, coStallMax: null, shared: 0 };
  return {
    stalls: co.length,
    coStallMean: co.reduce((a, b) => a + b, 0) / co.length,
    coStallMax: Math.max(...co),
    shared: co.filter((c) => c > 1).length,
  };
}
