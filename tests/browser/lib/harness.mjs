// Test harness: starts the real `ladder` binary on free ports, launches
// Debian's Chromium through playwright-core, and keeps a tally of checks.
// Every wait is on a condition with a deadline; nothing sleeps as a pass
// criterion.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const CHROMIUM = process.env.LADDER_CHROMIUM || '/usr/bin/chromium';

const START_LINE = /http=(http:\/\/\S+).*webtransport=(\S+).*cert_sha256=([0-9a-fA-F]{64})/;

/** Starts `ladder` (port 0 everywhere unless `http` / `h3` are given); resolves once its start line is printed. */
export function startServer(extraArgs = [], { timeoutMs = 30000, http = '127.0.0.1:0', h3 = '127.0.0.1:0', certsDir: sharedCerts = null } = {}) {
  const bin = process.env.LADDER_BIN;
  if (!bin) throw new Error('LADDER_BIN is not set (path to the built `ladder` binary)');
  if (!existsSync(bin)) throw new Error(`LADDER_BIN=${bin} does not exist; run cargo build first`);
  // A shared directory (two nodes serving one certificate) is the caller's to remove.
  const certsDir = sharedCerts || mkdtempSync(join(tmpdir(), 'ladder-certs-'));
  const args = ['--http', http, '--h3', h3, '--certs-dir', certsDir, ...extraArgs];
  const proc = spawn(bin, args, {
    cwd: REPO_ROOT,
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const log = [];
  const server = { proc, args, log, certsDir, ownCerts: !sharedCerts, http: null, wt: null, cert: null };
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`no start line from ladder within ${timeoutMs} ms; output:\n${log.join('\n')}`));
    }, timeoutMs);
    let buf = '';
    proc.stdout.on('data', (chunk) => {
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        log.push(`[stdout] ${line}`);
        const m = START_LINE.exec(line);
        if (m && !server.http) {
          server.http = m[1].replace(/\/$/, '');
          server.wt = m[2];
          server.cert = m[3];
          clearTimeout(timer);
          resolvePromise(server);
        }
      }
    });
    proc.stderr.on('data', (chunk) => {
      for (const line of String(chunk).split('\n')) if (line) log.push(`[stderr] ${line}`);
      if (log.length > 2000) log.splice(0, log.length - 2000);
    });
    proc.on('exit', (code, signal) => {
      server.exited = { code, signal };
      if (!server.http) {
        clearTimeout(timer);
        reject(new Error(`ladder exited (code ${code}, signal ${signal}) before its start line:\n${log.join('\n')}`));
      }
    });
    proc.on('error', (err) => { clearTimeout(timer); reject(err); });
  });
}

/** SIGTERM, then SIGKILL if it has not exited within `graceMs`. Resolves to the exit. */
export async function stopServer(server, graceMs = 5000) {
  if (!server) return null;
  try {
    if (!server.exited) {
      const exited = new Promise((r) => server.proc.once('exit', (code, signal) => r({ code, signal })));
      server.proc.kill('SIGTERM');
      let t;
      const res = await Promise.race([exited, new Promise((r) => { t = setTimeout(() => r(null), graceMs); })]);
      clearTimeout(t);
      if (!res) {
        server.proc.kill('SIGKILL');
        await exited;
        return { code: null, signal: 'SIGKILL', graceful: false };
      }
      return { ...res, graceful: true };
    }
    return server.exited;
  } finally {
    if (server.ownCerts) rmSync(server.certsDir, { recursive: true, force: true });
  }
}

/**
 * Launches Debian's Chromium headless. No flag weakens WebTransport's certificate checks;
 * `extraArgs` may trust one certificate by its SPKI hash (the TLS listener tests).
 */
export async function launchBrowser(extraArgs = []) {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} not found: install Debian's chromium (scripts/setup does)`);
  }
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 60000,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      ...extraArgs,
    ],
  });
}

/** A fresh context and page that records console errors and page errors. */
export async function openPage(browser, url) {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  context.setDefaultTimeout(15000);
  const page = await context.newPage();
  const consoleErrors = [];
  page.on('console', (msg) => { if (msg.type() === 'error') consoleErrors.push(`console: ${msg.text()}`); });
  page.on('pageerror', (err) => consoleErrors.push(`pageerror: ${err.message}`));
  await page.goto(url, { waitUntil: 'load', timeout: 20000 });
  return { context, page, consoleErrors };
}

/** Waits until `fn(arg)` is truthy in the page; on timeout, says what it waited for and shows the state. */
export async function waitState(page, what, fn, arg, timeoutMs = 15000) {
  try {
    const handle = await page.waitForFunction(fn, arg, { timeout: timeoutMs, polling: 100 });
    return await handle.jsonValue();
  } catch (err) {
    let snapshot = '';
    try { snapshot = JSON.stringify(await page.evaluate(compactState)); } catch { /* page gone */ }
    throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}\n  page state: ${snapshot.slice(0, 4000)}`);
  }
}

/** Runs in the page: the parts of window.ladderState worth printing on a failure. */
function compactState() {
  const s = window.ladderState;
  if (!s) return null;
  const panels = {};
  for (const [id, p] of Object.entries(s.panels)) {
    panels[id] = { state: p.state, transport: p.transport, received: p.received, expected: p.expected,
      reason: p.reason, reconnects: p.reconnects, dups: p.duplicates, ooo: p.outOfOrder };
  }
  return { ready: s.ready, run: s.run, panels, multi: s.multi, errors: s.errors };
}

/** The page's state as plain data. */
export function ladderState(page) {
  return page.evaluate(() => JSON.parse(JSON.stringify(window.ladderState)));
}

/** Collects named checks and prints a summary that test runners understand. */
export class Tally {
  constructor() { this.passed = 0; this.failed = 0; this.failures = []; }
  ok(name, detail = '') { this.passed++; console.log(`ok   ${name}${detail ? ` (${detail})` : ''}`); }
  fail(name, err) {
    this.failed++;
    const msg = err?.stack && !err.message?.includes('\n') ? err.message : (err?.message || String(err));
    this.failures.push(`${name}: ${msg}`);
    console.log(`FAIL ${name}: ${msg}`);
  }
  async check(name, fn) {
    try {
      const detail = await fn();
      this.ok(name, typeof detail === 'string' ? detail : '');
      return true;
    } catch (err) {
      this.fail(name, err);
      return false;
    }
  }
  expect(cond, message) { if (!cond) throw new Error(message); }
}
