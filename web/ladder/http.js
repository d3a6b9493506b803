// http.js: plain-HTTP requests to the contract's routes — the channel URLs,
// JSON requests with the contract's error body turned into an Error, and
// the publish by POST that every rung without a `publish` op falls back on.

export function channelUrl(base, channel, tail, params) {
  const url = new URL(`/api/channels/${encodeURIComponent(channel)}/${tail}`, base);
  for (const [k, v] of Object.entries(params)) {
    if (Array.isArray(v)) for (const each of v) url.searchParams.append(k, each); // repeatable (`tab`)
    else if (v !== null && v !== undefined) url.searchParams.set(k, v);
  }
  return url.toString();
}

/**
 * GETs (or sends `init`) and parses JSON; a non-2xx answer throws with the
 * contract's error code. `onResponse(res)`, when given, sees the answer's
 * headers first.
 */
export async function httpJson(fetchFn, url, init = {}, onResponse = null) {
  const res = await fetchFn(url, { cache: 'no-store', ...init });
  onResponse?.(res);
  let body = null;
  try { body = await res.json(); } catch { body = null; }
  if (!res.ok) {
    const code = body?.error?.code || `http_${res.status}`;
    const e = new Error(`${code}: ${body?.error?.message || res.statusText}`);
    e.status = res.status;
    e.code = code;
    throw e;
  }
  return body;
}

/** Publishes over plain HTTP: POST /api/channels/{channel}/messages, with `Idempotency-Key` when given. */
export async function httpPublish(base, channel, data, fetchFn = globalThis.fetch.bind(globalThis), key = null) {
  const headers = { 'content-type': 'application/json' };
  if (key) headers['idempotency-key'] = key;
  return httpJson(fetchFn, channelUrl(base, channel, 'messages', {}), {
    method: 'POST',
    headers,
    body: JSON.stringify(data),
  });
}

/**
 * Parses a poll answer's `Ladder-Connection` header (docs/protocol.md):
 * `{ server, number, accepted }`, or null when absent (HTTP/3) or not
 * understood.
 */
export function parseConnection(value) {
  const m = /^server=([0-9a-f]+); number=(\d+); accepted=(\d+)$/.exec(value || '');
  return m ? { server: m[1], number: Number(m[2]), accepted: Number(m[3]) } : null;
}
