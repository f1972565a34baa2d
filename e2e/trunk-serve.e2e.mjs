// Smoke test of the development command the README names: `trunk serve` on :8080 in front of the
// axum server on :3000 (Trunk.toml's proxies). Trunk.toml builds in release, so right after
// `trunk build --release` the serve reuses that build and is ready in seconds.
//
//   * trunk serves the client page and the dashboard; /api goes through its proxy;
//   * a tab opened on trunk's port joins: its WebSocket goes through trunk's /ws proxy, the tab
//     says "connected" and the server lists it;
//   * no page error in the tab.
//
//   node e2e/trunk-serve.e2e.mjs       (scripts/test.sh runs it after the pages are built)
//
// Environment: SERVER_BIN (default target/debug/server), CHROMIUM (/usr/bin/chromium),
// TRUNK_READY_SECS (how long trunk may take to serve; default 300: a cold debug build is not
// what this checks, but a slow machine still gets there).

import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import assert from 'node:assert/strict';
import { launchChromium, startServer, waitFor } from './harness.mjs';

// Trunk.toml's proxies point at :3000 and trunk serves on :8080: this test uses those ports.
const SERVER_PORT = 3000;
const TRUNK = 'http://127.0.0.1:8080';

const t0 = Date.now();
const log = (...a) => console.log(`[e2e trunk-serve ${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a);

/** Refuses to start when a port is taken (a developer's own `trunk serve` or server would
 * answer this test's requests instead of the processes it starts). */
async function assertFree(port) {
  await new Promise((resolve, reject) => {
    const probe = createServer()
      .once('error', () => reject(new Error(`port ${port} is in use: stop what listens there (a running server or trunk serve) and run this test again`)))
      .once('listening', () => probe.close(resolve))
      .listen(port, '127.0.0.1');
  });
}

/** Ends trunk and what it started (cargo, wasm-bindgen): its whole process group. */
async function stopTrunk(child, exited) {
  if (!child || child.exitCode !== null) return;
  try {
    process.kill(-child.pid, 'SIGINT');
  } catch {
    return;
  }
  const late = setTimeout(() => { try { process.kill(-child.pid, 'SIGKILL'); } catch {} }, 10_000);
  await exited;
  clearTimeout(late);
}

let server;
let trunk;
let trunkExit;
let browser;
let failed = false;
try {
  await assertFree(SERVER_PORT);
  await assertFree(8080);
  server = await startServer(SERVER_PORT);
  // The README's command, in its own process group so that it can be ended with its children.
  trunk = spawn('trunk', ['serve'], { stdio: ['ignore', 'inherit', 'inherit'], detached: true });
  trunkExit = new Promise((r) => trunk.once('exit', (code) => r(code)));
  const readySecs = Number(process.env.TRUNK_READY_SECS ?? 300);
  await Promise.race([
    waitFor('trunk serve on :8080', async () => (await fetch(`${TRUNK}/`)).ok, readySecs * 1000, 500),
    trunkExit.then((code) => { throw new Error(`trunk serve exited with ${code} before serving`); }),
  ]);
  assert.equal(server.process.exitCode, null, 'the server this test started still runs');
  log('trunk serves the pages');

  const health = await fetch(`${TRUNK}/api/health`);
  assert.equal(health.status, 200, 'the /api proxy reaches the server');
  assert.match(await (await fetch(`${TRUNK}/admin`)).text(), /<html/i, 'the dashboard is served');

  browser = await launchChromium();
  const tab = await browser.newPage();
  const pageErrors = [];
  tab.on('pageerror', (e) => pageErrors.push(String(e)));
  await tab.goto(`${TRUNK}/`);
  // Trunk.toml's headers: cross-origin isolated, as the server serves the pages.
  assert.equal(await tab.evaluate(() => self.crossOriginIsolated), true, 'trunk serves the page cross-origin isolated');
  await tab.fill('#client-name', 'trunk-tab');
  await tab.click('#join');
  await waitFor('the tab connected through trunk', async () => (await tab.textContent('#connection')) === 'connected');
  const clients = await waitFor('the server lists the tab', async () => {
    const { body } = await server.api('/api/admin/clients');
    return body?.some((c) => c.name === 'trunk-tab') ? body : null;
  });
  log('the tab joined through trunk\'s /ws proxy:', clients.length, 'client(s)');
  assert.equal(await tab.textContent('#shard'), 'no run yet: waiting for the admin to start one');
  assert.deepEqual(pageErrors, [], 'no page error');
  log('passed');
} catch (e) {
  failed = true;
  console.error('[e2e trunk-serve] FAILED:', e);
} finally {
  await browser?.close().catch(() => {});
  await stopTrunk(trunk, trunkExit);
  await server?.stop().catch(() => {});
}
process.exit(failed ? 1 : 0);
