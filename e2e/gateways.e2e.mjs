// Browser end-to-end test of the deployment on several machines, on one: nats-server, a
// coordinator and two gateways (the same server binary, the gateways with --public-url), and two
// client tabs, one opened on each gateway's page:
//
//   * every server lists both gateways at /api/servers (what a page hands its worker);
//   * the run's first round closes with both tabs; gateway A is then killed (SIGKILL);
//   * A's tab moves to gateway B on its own (no load balancer) with its key, shard and ledger,
//     and trains the last round there: the last round has both tabs, one client per tab, and
//     the tab itself lists round 3 under the same client number;
//   * the listing drops A; no page error, and no console error except about A's address.
//
//   node e2e/gateways.e2e.mjs          (scripts/test.sh runs it after the build)
//
// Environment: SERVER_BIN (default target/debug/server), CHROMIUM (/usr/bin/chromium),
// NATS_SERVER (default: Debian's nats-server), E2E_GATEWAYS_PORT (3390: the coordinator, the
// next two the gateways, and +10 the NATS server), DIST (dist).

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import assert from 'node:assert/strict';
import { launchChromium, startServer, waitFor } from './harness.mjs';

const RUN = {
  name: 'e2e-gateways', rounds: 3, min_clients: 2, quorum: 0.5, round_timeout_secs: 60,
  local_epochs: 1, batching: { batch_size: 256 }, learning_rate: 2,
  shards: { scheme: { kind: 'iid' }, num_shards: 10, seed: 1 },
};

const port = Number(process.env.E2E_GATEWAYS_PORT ?? 3390);
const natsPort = port + 10;
const t0 = Date.now();
const log = (...a) => console.log(`[e2e gateways ${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a);

/** Debian's nats-server on `natsPort`, once it accepts connections. */
async function startNats() {
  const bin = process.env.NATS_SERVER
    ?? ['/usr/sbin/nats-server', '/usr/bin/nats-server'].find((p) => existsSync(p));
  assert.ok(bin, 'nats-server is not installed: bash scripts/setup.sh installs it, or set NATS_SERVER');
  const child = spawn(bin, ['-a', '127.0.0.1', '-p', String(natsPort)], { stdio: 'ignore' });
  await waitFor('nats-server', () => new Promise((resolve) => {
    const s = connect(natsPort, '127.0.0.1', () => { s.end(); resolve(true); });
    s.on('error', () => resolve(false));
  }), 10_000, 100);
  return child;
}

let nats;
const servers = [];
let browser;
let failed = false;
try {
  nats = await startNats();
  const bus = ['--nats', `nats://127.0.0.1:${natsPort}`];
  const coordinator = await startServer(port, bus);
  servers.push(coordinator);
  const gateway = async (id, p) => {
    const g = await startServer(p, [...bus, '--gateway', id, '--public-url', `ws://127.0.0.1:${p}/ws`]);
    servers.push(g);
    return g;
  };
  const a = await gateway('gw-a', port + 1);
  const b = await gateway('gw-b', port + 2);
  const socket = (g) => g.base.replace('http://', 'ws://') + '/ws';
  const listed = async (s) => (await (await fetch(`${s.base}/api/servers`)).json()).servers.sort();
  const both = [socket(a), socket(b)].sort();
  for (const s of [coordinator, a, b]) {
    await waitFor(`${s.base} to list both gateways`, async () => JSON.stringify(await listed(s)) === JSON.stringify(both), 10_000);
  }
  log('every server lists both gateways');

  browser = await launchChromium();
  const context = await browser.newContext();
  const pageErrors = [];
  const consoleErrors = [];
  const tabs = [];
  for (const [i, g] of [a, b].entries()) {
    const tab = await context.newPage();
    tab.on('pageerror', (e) => pageErrors.push(`tab${i}: ${e}`));
    tab.on('console', (m) => m.type() === 'error' && consoleErrors.push(`tab${i}: ${m.text()}`));
    await tab.goto(`${g.base}/`);
    await tab.fill('#client-name', `gw-tab-${i}`);
    await tab.click('#join');
    await waitFor(`tab ${i} connected`, async () => (await tab.textContent('#connection')) === 'connected');
    tabs.push(tab);
  }
  await waitFor('2 clients at the coordinator', async () => (await coordinator.api('/api/admin/clients')).body?.length === 2);
  log('a tab on each gateway joined');

  const created = await coordinator.api('/api/admin/runs', { method: 'POST', body: JSON.stringify(RUN) });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const runId = created.body.run_id;
  assert.equal((await coordinator.api(`/api/admin/runs/${runId}/start`, { method: 'POST' })).status, 200);
  const history = async () => (await coordinator.api(`/api/admin/runs/${runId}`)).body;
  const round1 = await waitFor('round 1 to close', async () => (await history()).rounds[0], 120_000);
  assert.equal(round1.participants, 2, JSON.stringify(round1));
  const idBefore = await tabs[0].textContent('#client-id');
  await a.kill('SIGKILL');
  log('round 1 closed with both tabs; gateway A killed');

  const h = await waitFor('all 3 rounds', async () => {
    const h = await history();
    return h.rounds.length === 3 ? h : null;
  }, 180_000);
  const last = h.rounds[2];
  assert.equal(last.participants, 2, `A's tab trained the last round through B: ${JSON.stringify(h.rounds)}`);
  assert.equal(h.ledger.length, 2, 'one client per tab: the moved tab kept its key');
  assert.equal(await tabs[0].textContent('#connection'), 'connected');
  // What A's tab itself shows: the last round in its rounds table (newest first), as the same
  // client.
  await waitFor('A\'s tab to list round 3', async () => (await tabs[0].locator('#rounds tbody tr td').first().textContent()).trim() === '3', 30_000);
  assert.equal(await tabs[0].textContent('#client-id'), idBefore, 'the same client on the page');
  log('A\'s tab moved to B and trained the last round:', h.rounds.map((r) => r.participants).join(', '), 'participants');

  await waitFor('the listing to drop A', async () => JSON.stringify(await listed(b)) === JSON.stringify([socket(b)]), 10_000);
  assert.deepEqual(pageErrors, [], 'no page error');
  const aAddress = a.base.replace('http://', '');
  const unexpected = consoleErrors.filter((e) => !e.includes(aAddress));
  assert.deepEqual(unexpected, [], 'no console error except about the killed gateway');
  log('passed');
} catch (e) {
  failed = true;
  console.error('[e2e gateways] FAILED:', e);
} finally {
  await browser?.close().catch(() => {});
  for (const s of servers.reverse()) await s.stop().catch(() => {});
  nats?.kill();
}
process.exit(failed ? 1 : 0);
