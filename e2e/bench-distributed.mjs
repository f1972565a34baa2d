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
import { launchChromium, startServer, waitFor } from './harness.mjs';

const rounds = Number(process.argv[2] ?? 100);
const batch = Number(process.env.BATCH ?? 683);
const reuse = process.env.REUSE_KEYS === undefined ? null : process.env.REUSE_KEYS === 'true';
const server = await startServer(Number(process.env.BENCH_PORT ?? 3392));
const browser = await launchChromium();
try {
  const context = await browser.newContext();
  const tabs = [];
  for (let i = 0; i < 3; i++) {
    const tab = await context.newPage();
    await tab.goto(`${server.base}/`);
    await tab.fill('#client-name', `bench-tab-${i}`);
    await tab.click('#join');
    tabs.push(tab);
  }
  for (const tab of tabs) {
    await waitFor('a tab to connect', async () => (await tab.textContent('#connection')) === 'connected');
  }
  const config = {
    name: 'bench-distributed', rounds, min_clients: 3, local_epochs: 1,
    batching: { batch_size: batch }, learning_rate: 6.0, secure_aggregation: { reuse_keys: reuse },
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
  console.log(`## distributed DP, 3 Chromium tabs, ${h.rounds.length} rounds (batch ${batch} per tab), reuse_keys ${reuse ?? 'default'}: ${h.rounds.filter((r) => r.keys_reused).length} rounds reused keys`);
  const at = (f) => secs[Math.min(secs.length - 1, Math.floor(f * secs.length))];
  console.log(`round time: median ${at(0.5).toFixed(3)} s, quartiles ${at(0.25).toFixed(3)}–${at(0.75).toFixed(3)} s [${secs[0].toFixed(3)}–${secs.at(-1).toFixed(3)}]`);
  console.log(`wall time ${wall.toFixed(1)} s: ${(h.rounds.length / wall * 60).toFixed(1)} rounds per minute`);
  console.log(`last round: test accuracy ${(last.test_accuracy * 100).toFixed(2)} %, largest ε ${last.epsilon.toFixed(3)}; every round secure with 3 participants: ${h.rounds.every((r) => r.secure && r.participants === 3)}`);
} finally {
  await browser.close();
  await server.stop();
}
