// index.js: the rungs, best first, the class of each, and which of them can
// be tried at all here (offered by the server, supported by this browser).
// The fallback ORDER is RUNGS; the race (../race.js) runs through it.

import { WebTransportTransport } from './webtransport.js';
import { WebSocketTransport } from './websocket.js';
import { SseTransport } from './sse.js';
import { LongPollTransport, PollTransport } from './poll.js';

/** The rungs, best first. Names are the contract's transport names. */
export const RUNGS = ['webtransport', 'websocket', 'sse', 'longpoll', 'poll'];

export const TRANSPORTS = {
  webtransport: WebTransportTransport,
  websocket: WebSocketTransport,
  sse: SseTransport,
  longpoll: LongPollTransport,
  poll: PollTransport,
};

/** Why a rung cannot even be tried, or null. `impls` are test doubles. */
export function unavailableReason(name, info, impls) {
  if (!TRANSPORTS[name]) return 'unknown rung';
  if (!info?.transports?.includes(name)) return 'not offered by the server (/api/info)';
  if (impls?.[name]) return null;
  if (name === 'webtransport') {
    if (typeof globalThis.WebTransport !== 'function') return 'this browser has no WebTransport';
    if (!info.webtransport?.url) return 'the server gave no WebTransport URL';
  }
  if (name === 'websocket' && typeof globalThis.WebSocket !== 'function') return 'this browser has no WebSocket';
  if (name === 'sse' && typeof globalThis.EventSource !== 'function') return 'this browser has no EventSource';
  return null;
}

/** The rungs of `wanted` that can be tried, in `wanted`'s order. */
export function offeredRungs(info, wanted, impls) {
  return wanted.filter((n) => !unavailableReason(n, info, impls));
}
