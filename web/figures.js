// figures.js: the page's number helpers (percentiles and how a figure is
// written), shared by the panels, the table and the lanes.

/** The `p`th percentile of an ascending array (nearest rank), or null. */
export function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[idx];
}

export function fmtMs(v) { return v === null || v === undefined ? '–' : `${Math.round(v)} ms`; }

export function fmtBytes(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–';
  return v >= 10240 ? `${(v / 1024).toFixed(1)} KiB` : `${Math.round(v)} B`;
}
