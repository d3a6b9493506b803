// Browser tests of the TLS listeners (`--https`): the page over HTTP/2 and
// HTTP/3 in headless Chromium. Chromium trusts the development certificate
// by its SPKI hash (--ignore-certificate-errors-spki-list, which trusts
// that one key and nothing else); for HTTP/3 it is also told that the
// origin speaks QUIC (--origin-to-force-quic-on), because Alt-Svc alone
// never moves Chromium to HTTP/3 for a certificate it does not trust
// through its roots.
//
// Each scenario starts its own server and its own browser: the flags
// name that server's certificate and port.

import { createHash, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, stopServer, launchBrowser, openPage, waitState, ladderState } from './lib/harness.mjs';
import { startRun, waitRunDone, checkDelivery, checkShownProtocol } from './lib/workload.mjs';

/** base64 SHA-256 of the certificate's SubjectPublicKeyInfo (what Chromium's flag takes). */
function spkiHash(certsDir) {
  const cert = new X509Certificate(readFileSync(join(certsDir, 'dev-cert.pem')));
  const spki = cert.publicKey.export({ type: 'spki', format: 'der' });
  return createHash('sha256').update(spki).digest('base64');
}

/** A server with the TLS listeners; `https` is `https://127.0.0.1:PORT`. */
async function startTlsServer() {
  const server = await startServer(['--https', '127.0.0.1:0']);
  const line = server.log.find((l) => l.includes(' ready '));
  const m = /https=(https:\/\/\S+)/.exec(line || '');
  if (!m) throw new Error(`no https= in the start line: ${line}`);
  server.https = m[1];
  return server;
}

/** Publishes one message to `channel` over the plain listener (from Node, not the page). */
async function publish(server, channel, data) {
  const resp = await fetch(`${server.http}/api/channels/${channel}/messages`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(data),
  });
  if (resp.status !== 201) throw new Error(`publish to ${channel}: ${resp.status} ${await resp.text()}`);
}

/**
 * Opens `n` EventSources on one page (channels `${prefix}0..n-1`), publishes one message to
 * each once `expectLive` are open, and returns how many opened and how many got their message.
 */
async function sseFanIn(page, server, { n, prefix, expectLive }) {
  await page.evaluate(({ n, prefix }) => {
    window.sseProbe = { open: 0, got: new Set(), sources: [] };
    for (let i = 0; i < n; i++) {
      const es = new EventSource(`/api/channels/${prefix}${i}/events`);
      es.onopen = () => { window.sseProbe.open += 1; };
      es.addEventListener('message', () => window.sseProbe.got.add(i));
      window.sseProbe.sources.push(es);
    }
  }, { n, prefix });
  await waitState(page, `${expectLive} EventSources open`, (k) => window.sseProbe.open >= k, expectLive, 15000);
  for (let i = 0; i < n; i++) await publish(server, `${prefix}${i}`, { i });
  await waitState(page, `${expectLive} EventSources to get their message`, (k) => window.sseProbe.got.size >= k, expectLive, 15000);
  const res = await page.evaluate(() => ({ open: window.sseProbe.open, got: window.sseProbe.got.size }));
  await page.evaluate(() => window.sseProbe.sources.forEach((es) => es.close()));
  return res;
}

/** The page over HTTP/2: 10 live EventSources (6 over HTTP/1.1), and WebSocket by extended CONNECT. */
export async function scenarioH2(tally) {
  const server = await startTlsServer();
  const browser = await launchBrowser([`--ignore-certificate-errors-spki-list=${spkiHash(server.certsDir)}`]);
  try {
    // A same-origin document with no scripts of its own: the probe's
    // EventSources are the page's only connections.
    const { page, context } = await openPage(browser, `${server.https}/api/info`);
    await tally.check('h2: a page over HTTP/2 has 10 SSE subscriptions live at once', async () => {
      const proto = await page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);
      tally.expect(proto === 'h2', `loaded over ${proto}`);
      const r = await sseFanIn(page, server, { n: 10, prefix: 'htwo', expectLive: 10 });
      tally.expect(r.open === 10 && r.got === 10, `open ${r.open}, delivered ${r.got} of 10`);
      return `${r.open} open, ${r.got} delivered`;
    });

    await tally.check('h2: over HTTP/1.1 the same page has only 6 live (the per-origin limit)', async () => {
      const h1 = await context.newPage();
      await h1.goto(`${server.http}/api/info`);
      const proto = await h1.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);
      tally.expect(proto === 'http/1.1', `loaded over ${proto}`);
      // Once six have their message, the other four are still queued in
      // Chromium for a connection that never frees up.
      const r = await sseFanIn(h1, server, { n: 10, prefix: 'hone', expectLive: 6 });
      tally.expect(r.open === 6 && r.got === 6, `open ${r.open}, delivered ${r.got} of 10`);
      await h1.close();
      return `${r.open} open, ${r.got} delivered`;
    });

    await tally.check('h2: the page over HTTP/2 runs its WebSocket panel through extended CONNECT', async () => {
      const app = await context.newPage();
      const cdp = await context.newCDPSession(app);
      await cdp.send('Network.enable');
      const handshakes = [];
      cdp.on('Network.webSocketHandshakeResponseReceived', (e) => handshakes.push(e.response.status));
      await app.goto(`${server.https}/`);
      await waitState(app, 'the WebSocket panel open', () => window.ladderState?.panels?.ws?.state === 'open', null, 20000);
      const proto = await app.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);
      tally.expect(proto === 'h2', `page loaded over ${proto}`);
      // RFC 8441: the answer to an extended CONNECT is 200; over HTTP/1.1 it would be 101.
      tally.expect(handshakes.length > 0 && handshakes.every((s) => s === 200), `handshake statuses ${handshakes}`);
      await startRun(app, { k: 30, rate: 100 });
      const st = await waitRunDone(app, 60000);
      checkDelivery(st, ['ws'], 30);
      const shown = await checkShownProtocol(app, 'h2');
      await app.close();
      return `statuses ${[...new Set(handshakes)]}, ws panel got 30/30; ${shown}`;
    });
  } finally {
    await browser.close().catch(() => {});
    const exit = await stopServer(server);
    if (!exit?.graceful || exit.code !== 0) tally.fail('h2: server shuts down on SIGTERM with exit 0', new Error(JSON.stringify(exit)));
    if (tally.failed) console.log(`--- server output (h2) ---\n${server.log.slice(-40).join('\n')}`);
  }
}

/** The page over HTTP/3, its SSE panel delivering a workload exactly once. */
export async function scenarioH3(tally) {
  const server = await startTlsServer();
  const hostPort = server.https.replace('https://', '');
  const browser = await launchBrowser([
    `--ignore-certificate-errors-spki-list=${spkiHash(server.certsDir)}`,
    `--origin-to-force-quic-on=${hostPort}`,
  ]);
  try {
    const { page } = await openPage(browser, `${server.https}/`);
    await tally.check('h3: the page loads over HTTP/3 and its SSE panel delivers a workload exactly once', async () => {
      const proto = await page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);
      tally.expect(proto === 'h3', `page loaded over ${proto}`);
      await waitState(page, 'the SSE panel open', () => window.ladderState?.panels?.sse?.state === 'open', null, 20000);
      const sseProto = await page.evaluate(() => performance.getEntriesByType('resource')
        .filter((e) => e.name.includes('/events')).map((e) => e.nextHopProtocol));
      await startRun(page, { k: 50, rate: 100 });
      const st = await waitRunDone(page, 60000);
      checkDelivery(st, ['sse'], 50);
      const p = (await ladderState(page)).panels.sse;
      return `sse p50=${p.p50}ms, events over ${[...new Set(sseProto)].join(',') || 'h3 (still open)'}`;
    });

    await tally.check('h3: the page shows h3 for itself, its panels and the table\'s HTTP row', async () => checkShownProtocol(page, 'h3'));
  } finally {
    await browser.close().catch(() => {});
    const exit = await stopServer(server);
    if (!exit?.graceful || exit.code !== 0) tally.fail('h3: server shuts down on SIGTERM with exit 0', new Error(JSON.stringify(exit)));
    if (tally.failed) console.log(`--- server output (h3) ---\n${server.log.slice(-40).join('\n')}`);
  }
}
