// protocol.js: which HTTP version carried the page and each rung's
// requests, as the browser itself reports it: `nextHopProtocol` of the
// Navigation Timing entry (the page) and of the Resource Timing entries of
// the rung's own requests ('http/1.1', 'h2', 'h3').
//
// A request appears in Resource Timing only once it has ended, so an
// EventSource that is still open has no entry yet. Each rung's readiness
// probe is a request of the same kind that ends at once (the SSE probe
// stream is closed after its first heartbeat), so every HTTP rung has an
// entry as soon as it is ready. WebSocket handshakes never appear in
// Resource Timing, and a WebTransport session is HTTP/3 by definition:
// for those two the page says what it knows and how it knows it.

/** The HTTP version the page itself was loaded over, or null if the browser does not say. */
export function pageProtocol() {
  const nav = performance.getEntriesByType?.('navigation')?.[0];
  return nav?.nextHopProtocol || null;
}

/**
 * Which rung made a request, from its URL: `/events` is SSE; a GET of
 * `/messages` carries `wait` (long polling) or `since` (short polling); a
 * `/messages` URL with neither is a publish (or the short-poll probe).
 */
export function rungOfUrl(href) {
  let url;
  try { url = new URL(href); } catch { return null; }
  const m = /^\/api\/channels\/[^/]+\/(events|messages)$/.exec(url.pathname);
  if (!m) return null;
  if (m[1] === 'events') return 'sse';
  if (url.searchParams.has('wait')) return 'longpoll';
  if (url.searchParams.has('since')) return 'poll';
  return 'publish';
}

/**
 * Watches Resource Timing and remembers, per rung, the `nextHopProtocol`
 * of its latest ended request. `onChange` runs when a rung's version
 * changes. An observer (not `getEntriesByType`) because the page makes
 * more requests than the default Resource Timing buffer keeps.
 */
export class ProtocolWatch {
  constructor(onChange = () => {}) {
    this.page = pageProtocol();
    this.byRung = {};
    this.onChange = onChange;
    if (typeof PerformanceObserver !== 'function') return;
    this.observer = new PerformanceObserver((list) => this._take(list.getEntries()));
    this.observer.observe({ type: 'resource', buffered: true });
  }

  _take(entries) {
    let changed = false;
    for (const e of entries) {
      const rung = rungOfUrl(e.name);
      // Cross-origin entries without Timing-Allow-Origin report '': unknown, not a version.
      if (!rung || !e.nextHopProtocol) continue;
      if (this.byRung[rung] !== e.nextHopProtocol) changed = true;
      this.byRung[rung] = e.nextHopProtocol;
    }
    if (changed) this.onChange();
  }

  /**
   * What carries `rung` on this page: `{ version, how }`. `version` is a
   * `nextHopProtocol` value when the browser reported one for the rung's
   * requests, else null; `how` says where the answer comes from.
   */
  of(rung) {
    if (rung === 'webtransport') {
      return { version: 'h3', how: 'WebTransport sessions are HTTP/3 (extended CONNECT over QUIC), each on its own connection' };
    }
    if (rung === 'websocket' && location.protocol === 'http:') {
      // No browser speaks HTTP/2 without TLS, so ws:// can only be an Upgrade.
      return { version: 'http/1.1', how: 'ws:// is always an HTTP/1.1 Upgrade (WebSocket handshakes are not in Resource Timing)' };
    }
    if (rung === 'websocket') return { version: null, how: this._websocket() };
    const version = this.byRung[rung] || null;
    return {
      version,
      how: version ? 'Resource Timing of this rung\'s requests' : 'no request of this rung has ended yet',
    };
  }

  _websocket() {
    return 'WebSocket handshakes are not in Resource Timing; Chromium uses extended CONNECT (RFC 8441) '
      + 'on an h2 connection when the server allows it, else an HTTP/1.1 Upgrade';
  }
}

/** A version with its long name, e.g. `h2 (HTTP/2)`. */
export function describeVersion(v) {
  const long = { 'http/1.1': 'HTTP/1.1', 'http/1.0': 'HTTP/1.0', h2: 'HTTP/2', h3: 'HTTP/3' }[v];
  return long ? `${v} (${long})` : v;
}
