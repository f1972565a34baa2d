// Browser benchmark (numbers for BENCHMARKS.md), against the trunk build in dist/:
//   1. bundle size: wasm + js of the page and of the training worker, raw and gzip;
//   2. page load → ready: the page mounted; after Join, the worker connected and the shard
//      downloaded and checked (5 cold loads, median);
//   3. DP-SGD throughput inside Chromium: the same step benchmark as `bench-wasm.sh` in a
//      dedicated worker, and a real training round of one tab (6 000 examples, the demo config);
//   4. main-thread responsiveness while that tab trains: animation frames per second and the
//      longest gap between frames, against the same page idle.
//
//   SERVER_BIN=target/release/server node e2e/bench.mjs
import { readdirSync, readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { frameStats, launchChromium, recordFrames, startServer, stepRatesInWorker, trainingWindows, waitFor } from './harness.mjs';

const dist = process.env.DIST ?? 'dist';
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const kb = (n) => `${(n / 1024).toFixed(0)} KiB`;

// --- 1. Bundle size.
const files = readdirSync(dist);
const groups = {
  'page (Leptos)': files.filter((f) => /^frontend-.*\.(wasm|js)$/.test(f)),
  'training worker': files.filter((f) => /^worker(_bg\.wasm|\.js|_loader\.js)$/.test(f)),
  'Chart.js': files.filter((f) => f === 'chart.umd.js'),
};
console.log('## bundle (raw → gzip -6, as the server sends it)');
let total = [0, 0];
for (const [name, list] of Object.entries(groups)) {
  let raw = 0;
  let gz = 0;
  for (const f of list) {
    const bytes = readFileSync(`${dist}/${f}`);
    raw += bytes.length;
    gz += gzipSync(bytes, { level: 6 }).length;
  }
  total = [total[0] + raw, total[1] + gz];
  console.log(`${name.padEnd(16)} ${kb(raw).padStart(10)} → ${kb(gz).padStart(9)}   (${list.join(', ')})`);
}
console.log(`${'total'.padEnd(16)} ${kb(total[0]).padStart(10)} → ${kb(total[1]).padStart(9)}`);

const server = await startServer(Number(process.env.BENCH_PORT ?? 3388));
const browser = await launchChromium();
try {
  const base = server.base;
  // A run for the tab: the demo config, one client is enough, not started yet.
  const created = await server.api('/api/admin/runs', {
    method: 'POST',
    body: JSON.stringify({ name: 'bench', rounds: 3, min_clients: 1 }),
  });
  if (created.status !== 201) throw new Error(`run not created: ${JSON.stringify(created)}`);

  // --- 2. Page load → ready (fresh context each time: nothing cached).
  const loads = { mounted: [], connected: [], data: [] };
  for (let i = 0; i < 5; i++) {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${base}/`);
    const at = (cond) => page.waitForFunction(cond, null, { polling: 5, timeout: 60_000 }).then((h) => h.jsonValue());
    loads.mounted.push(await at(() => document.querySelector('#join') && performance.now()));
    const clicked = await page.evaluate(() => { document.querySelector('#join').click(); return performance.now(); });
    loads.connected.push((await at(() => document.querySelector('#connection')?.textContent === 'connected' && performance.now())) - clicked);
    loads.data.push((await at(() => document.querySelector('#histogram') && performance.now())) - clicked);
    await context.close();
  }
  console.log('\n## page load → ready (ms, median of 5 cold loads; min–max)');
  const show = (xs) => `${median(xs).toFixed(0)} (${Math.min(...xs).toFixed(0)}–${Math.max(...xs).toFixed(0)})`;
  console.log(`navigation → page mounted (Join button):      ${show(loads.mounted)}`);
  console.log(`Join → worker loaded and connected:           ${show(loads.connected)}`);
  console.log(`Join → shard downloaded and checked (ready):  ${show(loads.data)}`);

  // --- 3a. The step benchmark in a dedicated worker of the page (the worker bundle exports it).
  const page = await (await browser.newContext()).newPage();
  await page.goto(`${base}/`);
  await page.waitForSelector('#join');
  const runs = await stepRatesInWorker(page, base, [['dp', 64, 30], ['plain', 64, 30], ['inference', 64, 30], ['dp', 512, 6]]);
  const steps = Object.fromEntries(Object.entries(runs).map(([k, r]) => [k.replace('-', ' batch '), median(r)]));
  console.log('\n## TinyCNN steps in a Chromium dedicated worker (samples/s, median of 3)');
  for (const [k, v] of Object.entries(steps)) console.log(`${k.padEnd(20)} ${v.toFixed(0)}`);

  // --- 3b + 4. One tab trains 3 real rounds while the page counts its animation frames.
  await recordFrames(page);
  await page.click('#join');
  await waitFor('the tab to get its shard', () => page.$('#histogram'));
  await page.waitForTimeout(3000); // idle baseline
  const idleEnd = await page.evaluate(() => performance.now());
  const started = await server.api(`/api/admin/runs/${created.body.run_id}/start`, { method: 'POST' });
  if (started.status !== 200) throw new Error(`run not started: ${JSON.stringify(started)}`);
  const windows = await trainingWindows(page, 3, 20);
  const { stats, rows } = await frameStats(page, [[idleEnd - 3000, idleEnd], ...windows]);
  const result = { idle: stats[0], training: stats.slice(1), rows };
  const seconds = result.rows.map((r) => parseFloat(r[4]));
  console.log('\n## a real DP round in one tab (6 000 examples, batch 512, 1 local epoch, σ for ε ≤ 3)');
  for (const r of result.rows.reverse()) console.log(`round ${r[0]}: ${r[4]} → ${(6000 / parseFloat(r[4])).toFixed(0)} samples/s (ε after ${r[3]})`);
  console.log(`median: ${(6000 / median(seconds)).toFixed(0)} samples/s`);
  console.log('\n## main thread while the worker trains (requestAnimationFrame)');
  console.log(`idle:     ${result.idle.fps.toFixed(1)} frames/s, longest gap ${result.idle.maxGap.toFixed(1)} ms`);
  for (const [i, w] of result.training.entries()) {
    console.log(`round ${i + 1}:  ${w.fps.toFixed(1)} frames/s, longest gap ${w.maxGap.toFixed(1)} ms`);
  }
} finally {
  await browser.close();
  await server.stop();
}
