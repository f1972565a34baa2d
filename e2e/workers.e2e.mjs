// Browser end-to-end test of training on every core: one client tab joins with 2 training workers
// (its worker and one helper it starts), and
//
//   * the page is cross-origin isolated, so the two claim each step's chunks as they come free
//     (a SharedArrayBuffer counter);
//   * the tab warms its workers up once its shard is loaded: the helper starts before the first
//     round, and nothing is spent or reported;
//   * round 1 trains with both: its row in the tab's rounds table says "… samples/s on 2 workers";
//   * the helper is then made to fail when it gets its next slice (its message handler throws, as a
//     crashed worker would): the tab says which worker failed, the training worker computes that
//     step again from the same batch and finishes the round alone (its row: "on 1 worker"), and
//     the round is not lost (the server aggregates it at the first attempt);
//   * the next round starts a fresh helper and trains on 2 workers again;
//   * that helper is then made to forge its answer in its reply buffer (the shared memory a
//     claimed step is answered in): it marks the answer written and says it names a million
//     chunks, more than the buffer has room for. The training worker refuses it before reading
//     the list (the tab names the reason), computes the step again alone, and the round after
//     trains on a fresh helper; the run finishes with every round aggregated once, at the accuracy
//     a run of one tab reaches;
//   * no page error.
//
//   node e2e/workers.e2e.mjs          (scripts/test.sh runs it after the build)
//
// Environment: SERVER_BIN (default target/debug/server), CHROMIUM (/usr/bin/chromium),
// E2E_WORKERS_PORT (3386), DIST (dist).

import assert from 'node:assert/strict';
import { launchChromium, startServer, waitFor } from './harness.mjs';

const RUN = {
  name: 'e2e-workers', rounds: 5, min_clients: 1, round_timeout_secs: 60,
  local_epochs: 1, batching: { batch_size: 256 }, learning_rate: 2,
  // A fixed σ (a failed attempt, if there were one, would be charged like every round sent).
  dp: { max_grad_norm: 1, noise_multiplier: 1.1, target_epsilon: null, delta: 1e-5 },
  shards: { scheme: { kind: 'iid' }, num_shards: 10, seed: 1 },
};
const CRASH = 'helper crashed (e2e)';
const FORGED_CHUNKS = 1_000_000;

const port = Number(process.env.E2E_WORKERS_PORT ?? 3386);
const t0 = Date.now();
const log = (...a) => console.log(`[e2e workers ${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a);

let server;
let browser;
let failed = false;
try {
  server = await startServer(port);
  browser = await launchChromium();
  const page = await (await browser.newContext()).newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  // The page's workers in the order they start: the training worker, then its helpers.
  const workers = [];
  page.on('worker', (w) => workers.push(w));

  const created = await server.api('/api/admin/runs', { method: 'POST', body: JSON.stringify(RUN) });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const runId = created.body.run_id;
  await page.goto(`${server.base}/`);
  // Served cross-origin isolated, so the pool claims each step's chunks (which the page cannot
  // see; a claimed step's answers are checked by pool::Coverage, unit-tested in client-wasm).
  assert.equal(await page.evaluate(() => self.crossOriginIsolated), true, 'the page is cross-origin isolated');
  await page.fill('#workers', '2');
  await page.click('#join');
  await waitFor('the tab to connect', async () => (await page.textContent('#connection')) === 'connected');
  // Once its shard is loaded the tab warms its workers up (a throwaway round on a copy of its
  // first examples, charged to a throwaway ledger): the helper starts before the first round, and
  // nothing is spent or said.
  await waitFor('the warm-up to start the helper', async () => workers.length === 2, 60_000, 50);
  await page.waitForTimeout(1000);
  assert.equal(await page.textContent('#epsilon'), 'ε = 0 (nothing released yet)', 'the warm-up spends nothing');
  assert.equal((await page.textContent('ul.messages')).trim(), '', 'the warm-up says nothing');
  await server.api(`/api/admin/runs/${runId}/start`, { method: 'POST' });

  const speeds = () => page.locator('#rounds tbody td.speed').allTextContents();
  const rounds = async () => (await page.locator('#rounds tbody tr td:first-child').allTextContents()).map(Number);
  await waitFor('round 1 in the tab', async () => (await rounds()).includes(1), 120_000, 100);
  const [first] = await speeds();
  assert.match(first, /^[\d\u00a0]+ samples\/s on 2 workers$/, 'round 1 trained on the worker and its helper');
  assert.equal(workers.length, 2, `the page runs its training worker and one helper: ${workers.map((w) => w.url())}`);
  log(`round 1 trained at ${first}`);

  // The helper throws at its next slice: an uncaught error inside it, which its parent sees.
  const helper = workers[1];
  await helper.evaluate((crash) => { self.onmessage = () => { throw new Error(crash); }; }, CRASH);
  const failure = await waitFor('the tab to say its helper failed', async () => {
    const text = await page.textContent('ul.messages');
    return text?.includes('failed') ? text : null;
  }, 120_000, 100);
  const crash = CRASH.replace(/[()]/g, '\\$&');
  const lost = new RegExp(`round (\\d+): training worker 2 of 2 failed: .*${crash}; this round goes on on one worker`);
  assert.match(failure, lost, `the tab names the failed worker: ${failure}`);
  const alone = Number(failure.match(lost)[1]);
  assert.ok(!failure.includes('not trained'), `the round is not lost: ${failure}`);
  log(`the failure as the tab shows it: ${JSON.stringify(failure.trim())}`);

  // The fresh helper forges its answers: written, to this very request, naming more chunks than
  // its reply buffer holds (a list of that length, read where the layout puts it, would lie
  // outside the buffer: the training worker must refuse the count before it reads the list).
  const fresh = await waitFor('a fresh helper with its message handler', async () => {
    const w = workers[2];
    return w && await w.evaluate(() => typeof self.onmessage === 'function') ? w : null;
  }, 60_000, 20);
  await fresh.evaluate((named) => {
    self.onmessage = (e) => {
      const buffer = e.data?.replyBuffer;
      if (!buffer) return;
      const words = new Int32Array(buffer, 0, 7);
      words.set([JSON.parse(e.data.slice).seq, 0, 0, 0, 0, named], 1);
      Atomics.store(words, 0, 1);
      Atomics.notify(words, 0);
    };
  }, FORGED_CHUNKS);
  const forged = new RegExp(`round (\\d+): training worker 2 of 2 failed: it names ${FORGED_CHUNKS} chunks: its reply has room for \\d+; this round goes on on one worker`);
  const refused = await waitFor('the tab to say the forged answer was refused', async () => {
    const text = await page.textContent('ul.messages');
    return forged.test(text ?? '') ? text : null;
  }, 120_000, 100);
  const forgedRound = Number(refused.match(forged)[1]);
  log(`the forged answer as the tab shows it: ${JSON.stringify(refused.match(forged)[0])}`);

  await waitFor('the run to finish', async () => (await server.api(`/api/admin/runs/${runId}`)).body?.run.status === 'finished',
    300_000, 500);
  const history = (await server.api(`/api/admin/runs/${runId}`)).body;
  assert.equal(history.rounds.length, 5, `five rounds aggregated: ${JSON.stringify(history)}`);
  assert.ok(history.rounds.every((r) => r.participants === 1), JSON.stringify(history.rounds));
  assert.ok(history.rounds.every((r) => r.attempts === 1), `no round attempted twice: ${JSON.stringify(history.rounds)}`);
  const last = history.rounds.at(-1);
  assert.ok(last.test_accuracy >= 0.8, `accuracy after 5 rounds: ${last.test_accuracy}`);
  await waitFor('the tab to list 5 rounds', async () => (await rounds()).length === 5, 30_000, 100);
  // Rows are newest first: round 5, 4, … 1.
  const all = (await speeds()).reverse();
  all.forEach((t, i) => {
    const expected = [alone, forgedRound].includes(i + 1) ? '1 worker' : '2 workers';
    assert.ok(new RegExp(`^[\\d\u00a0]+ samples/s on ${expected}$`).test(t), `round ${i + 1} on ${expected}: ${JSON.stringify(all)}`);
  });
  assert.equal(alone, 2, 'the crash came in round 2');
  // The forging helper may have been set up after round 3 had trained: then round 4 refused it.
  assert.ok([3, 4].includes(forgedRound), `the forged answer came in round 3 or 4: ${forgedRound}`);
  assert.equal(workers.length, 4, 'a fresh helper was started after each failure');
  assert.deepEqual(pageErrors, [], 'no uncaught page error');
  log(`run finished: accuracy ${(last.test_accuracy * 100).toFixed(2)} %; speeds ${all.join(', ')}`);
  log('passed');
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await browser?.close();
  await server?.stop();
  process.exit(failed ? 1 : 0);
}
