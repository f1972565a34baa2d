// Distributed DP in a real browser: three Chromium tabs (each a Web Worker training TinyCNN in
// wasm) on three 20 000-example shards of MNIST, one distributed DP-SGD step per round over
// secure aggregation (expected batch 683 per tab, ≈ 2 050 in all, ε ≤ 3 at δ = 1e-5 over the
// run). Prints the round time (median and range from the server's records), rounds per minute
// and the accuracy of the last round.
//
//   SERVER_BIN=target/release/server node e2e/bench-distributed.mjs [ROUNDS]   (default 100)
//   BATCH=1: a round's fixed cost (next to nothing to compute; default 683 per tab)
//   REUSE_KEYS=false: fresh secure-aggregation keys every round (default: the run's default,
//   keys kept while the three tabs stay)
//   WORKERS=n: each tab's training workers (default: the page's, one per core)
//   ONE_TAB=1 SIM_BIN=target/release/sim: one tab's own step, its cores to itself: one tab on a
//   server shard of 20 000 and two simulated clients (`nice -n 19`, 200 examples of their own),
//   every client sampling at q = 0.05 (the tab's step ≈ 1 000 examples, theirs ≈ 10); prints the
//   tab's step speed (its examples over the time from its round's start to its sum), median of
//   the rounds. With WORKERS=1 and 2: what the tab's helpers bring to a distributed round.
import { spawn } from 'node:child_process';
import { launchChromium, startServer, waitFor } from './harness.mjs';

const rounds = Number(process.argv[2] ?? 100);
const batch = Number(process.env.BATCH ?? 683);
const reuse = process.env.REUSE_KEYS === undefined ? null : process.env.REUSE_KEYS === 'true';
const oneTab = Boolean(process.env.ONE_TAB);
const server = await startServer(Number(process.env.BENCH_PORT ?? 3392));
const browser = await launchChromium();
let sims = null;
try {
  const context = await browser.newContext();
  const tabs = [];
  if (oneTab) {
    sims = spawn('nice', ['-n', '19', process.env.SIM_BIN ?? 'target/release/sim', '--server', server.base.replace('http', 'ws') + '/ws',
      '--clients', '2', '--own-examples', '200', '--parallel', '2'], { stdio: ['ignore', 'ignore', 'inherit'] });
  }
  for (let i = 0; i < (oneTab ? 1 : 3); i++) {
    const tab = await context.newPage();
    await tab.goto(`${server.base}/`);
    await tab.fill('#client-name', `bench-tab-${i}`);
    if (process.env.WORKERS) await tab.fill('#workers', process.env.WORKERS);
    await tab.click('#join');
    tabs.push(tab);
  }
  for (const tab of tabs) {
    await waitFor('a tab to connect', async () => (await tab.textContent('#connection')) === 'connected');
  }
  const config = {
    name: 'bench-distributed', rounds, min_clients: 3, local_epochs: 1,
    batching: oneTab ? { sample_rate: 0.05 } : { batch_size: batch }, learning_rate: 6.0, secure_aggregation: { reuse_keys: reuse },
    dp: { max_grad_norm: 1.0, target_epsilon: 3.0, delta: 1e-5,
          distributed: { contributors: 3, evaluate_every: Math.max(1, Math.floor(rounds / 2)), schedule: 'cosine' } },
    shards: { scheme: { kind: 'iid' }, num_shards: 3, seed: 42 },
  };
  const created = await server.api('/api/admin/runs', { method: 'POST', body: JSON.stringify(config) });
  if (created.status !== 201) throw new Error(`run refused: ${JSON.stringify(created.body)}`);
  const id = created.body.run_id;
  // The tabs fetch their shards first, so the timing is the rounds'.
  for (const tab of tabs) {
    await waitFor('a shard', async () => /20000 examples/.test(await tab.textContent('#shard')), 120_000);
  }
  await new Promise((r) => setTimeout(r, 3_000)); // the downloads
  const t0 = Date.now();
  await server.api(`/api/admin/runs/${id}/start`, { method: 'POST' });
  await waitFor('the run to finish', async () => (await server.api(`/api/admin/runs/${id}`)).body?.run.status === 'finished',
    3_600_000, 1_000);
  const wall = (Date.now() - t0) / 1000;
  const h = (await server.api(`/api/admin/runs/${id}`)).body;
  const secs = h.rounds.map((r) => r.duration_ms / 1000).sort((a, b) => a - b);
  const last = h.rounds.at(-1);
  const who = oneTab ? `1 Chromium tab (q 0.05 of 20 000) and 2 simulated clients (q 0.05 of 200), tab workers ${process.env.WORKERS ?? 'default'}` : `3 Chromium tabs (batch ${batch} per tab)`;
  console.log(`## distributed DP, ${who}, ${h.rounds.length} rounds, reuse_keys ${reuse ?? 'default'}: ${h.rounds.filter((r) => r.keys_reused).length} rounds reused keys`);
  const at = (f) => secs[Math.min(secs.length - 1, Math.floor(f * secs.length))];
  console.log(`round time: median ${at(0.5).toFixed(3)} s, quartiles ${at(0.25).toFixed(3)}–${at(0.75).toFixed(3)} s [${secs[0].toFixed(3)}–${secs.at(-1).toFixed(3)}]`);
  console.log(`wall time ${wall.toFixed(1)} s: ${(h.rounds.length / wall * 60).toFixed(1)} rounds per minute`);
  for (const [i, tab] of tabs.entries()) {
    // The tab's table keeps its latest rounds: each says the workers its step ran on.
    const on = (await tab.locator('#rounds tbody td.speed').allTextContents()).map((t) => t.replace(/^.* on /, 'on '));
    const counts = Object.entries(on.reduce((m, w) => ({ ...m, [w]: (m[w] ?? 0) + 1 }), {}));
    console.log(`tab ${i}: its listed rounds ran ${counts.map(([w, n]) => `${n}× ${w}`).join(', ')}`);
    const speeds = (await tab.locator('#rounds tbody td.speed').allTextContents()).map((t) => Number(t.split(' samples/s')[0].replace(/\D/g, '')));
    const sorted = [...speeds].sort((a, b) => a - b);
    console.log(`tab ${i}: its step at median ${sorted[Math.floor(sorted.length / 2)]} samples/s [${sorted[0]}–${sorted.at(-1)}] over ${speeds.length} rounds`);
  }
  console.log(`last round: test accuracy ${(last.test_accuracy * 100).toFixed(2)} %, largest ε ${last.epsilon.toFixed(3)}; every round secure with 3 participants: ${h.rounds.every((r) => r.secure && r.participants === 3)}`);
} finally {
  sims?.kill();
  await browser.close();
  await server.stop();
}
