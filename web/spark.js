// spark.js: the small latency traces of the page (a panel's messages, a
// lane's), drawn as SVG with the median dashed.

import { percentile } from './figures.js';

const NS = 'http://www.w3.org/2000/svg';

/**
 * Draws `values` (ms, in arrival order) into `svg` (viewBox 300 × 60).
 * `top` fixes the scale (lanes side by side share one, so their stalls
 * compare at a glance); by default it is 1.1 × the p99.
 */
export function drawSpark(svg, values, { top: fixedTop = null } = {}) {
  const W = 300;
  const H = 60;
  while (svg.firstChild) svg.firstChild.remove();
  if (values.length === 0) { svg.setAttribute('aria-label', 'No latency data yet'); return; }
  const sorted = [...values].sort((a, b) => a - b);
  const top = Math.max(1, fixedTop ?? percentile(sorted, 99) * 1.1);
  const n = values.length;
  const step = n > 1 ? W / (n - 1) : W;
  const pts = [];
  const stride = Math.max(1, Math.floor(n / 600));
  for (let i = 0; i < n; i += stride) {
    const y = H - 2 - Math.min(1, values[i] / top) * (H - 4);
    pts.push(`${(i * step).toFixed(1)},${y.toFixed(1)}`);
  }
  const median = document.createElementNS(NS, 'line');
  const my = H - 2 - Math.min(1, percentile(sorted, 50) / top) * (H - 4);
  Object.entries({ x1: 0, x2: W, y1: my, y2: my, class: 'spark-median' }).forEach(([k, v]) => median.setAttribute(k, v));
  const line = document.createElementNS(NS, 'polyline');
  line.setAttribute('points', pts.join(' '));
  line.setAttribute('class', 'spark-line');
  svg.append(median, line);
  svg.setAttribute('aria-label', `Latency of ${n} messages in arrival order: fastest ${sorted[0]} ms, median ${percentile(sorted, 50)} ms, slowest ${sorted[n - 1]} ms`);
}
