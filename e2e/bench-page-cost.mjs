// What the client page's main thread does while a joined tab trains (issue 17): one tab joins a
// run of ROUNDS (6) DP rounds at batch 64 on WORKERS (2) workers, and Chromium's own counters
// (CDP Performance.getMetrics: task, script, layout and style time, DOM nodes) are read before
// the run starts and after it ends. PROFILE=1 adds a sampling profile of the page's main thread
// (self time by function); COUNT=1 times every text-node write (`nodeValue`, how Leptos updates
// a text) by the element it is in; POLL=1 splits the main thread's time into while the progress
// bar moves and otherwise (its own polling costs ≈ 0.2 s). The times are wall-clock on a thread
// that two busy workers preempt: they bound its work, they do not measure its CPU
// (benchmarks/thread-cpu.py does). Log: benchmarks/page-cost.log.
//   SERVER_BIN=… [DIST=dist] node e2e/bench-page-cost.mjs
import { createSpeedRun, launchChromium, startServer, waitFor } from './harness.mjs';
const rounds = Number(process.env.ROUNDS ?? 6), workers = Number(process.env.WORKERS ?? 2);
const server = await startServer(3000 + Math.floor(Math.random() * 1000));
const browser = await launchChromium();
try {
  const id = await createSpeedRun(server, { name: 'pagecost', rounds, batch: 64, learningRate: 0.5 });
  const context = await browser.newContext();
  const page = await context.newPage();
  const cdp = await context.newCDPSession(page);
  await cdp.send('Performance.enable');
  if (process.env.COUNT) await page.addInitScript(() => {
    const d = Object.getOwnPropertyDescriptor(Node.prototype, 'nodeValue');
    self.__nv = { calls: 0, ms: 0, by: {} };
    Object.defineProperty(Node.prototype, 'nodeValue', { get: d.get, set(v) { const t = performance.now(); d.set.call(this, v); const e = performance.now() - t; self.__nv.calls++; self.__nv.ms += e; const k = (this.parentElement?.id || this.parentElement?.tagName || '?'); const b = self.__nv.by[k] ??= [0, 0, String(v).slice(0, 40)]; b[0]++; b[1] += e; } });
  });
  await page.goto(`${server.base}/`);
  await page.fill('#workers', String(workers));
  await page.click('#join');
  await waitFor('shard', () => page.$('#histogram'), 120_000);
  const m = async () => Object.fromEntries((await cdp.send('Performance.getMetrics')).metrics.map((x) => [x.name, x.value]));
  await new Promise((r) => setTimeout(r, 1500));
  const a = await m();
  if (process.env.PROFILE) { await cdp.send('Profiler.enable'); await cdp.send('Profiler.setSamplingInterval', { interval: 100 }); await cdp.send('Profiler.start'); }
  await server.api(`/api/admin/runs/${id}/start`, { method: 'POST' });
  let prev = a, inTrain = 0, outTrain = 0, tIn = 0, tOut = 0, done = false;
  const fin = waitFor('finish', async () => (await server.api(`/api/admin/runs/${id}`)).body?.run.status === 'finished', 300_000, 1000).then(() => { done = true; });
  while (!done && process.env.POLL) {
    await new Promise((r) => setTimeout(r, 50));
    const training = await cdp.send('Runtime.evaluate', { expression: "(() => { const p = document.querySelector('#train-progress'); return p && p.value > 0 && p.value < 1; })()", returnByValue: true });
    const cur = await m();
    const dt = cur.TaskDuration - prev.TaskDuration, wall = cur.Timestamp - prev.Timestamp;
    if (training.result.value) { inTrain += dt; tIn += wall; } else { outTrain += dt; tOut += wall; }
    prev = cur;
  }
  await fin;
  if (process.env.POLL) console.log(`main thread while training: ${inTrain.toFixed(3)} s of ${tIn.toFixed(2)} s (${(100 * inTrain / tIn).toFixed(1)} %); otherwise ${outTrain.toFixed(3)} s of ${tOut.toFixed(2)} s`);
  const b = await m();
  if (process.env.COUNT) console.log(JSON.stringify(await page.evaluate(() => self.__nv)));
  if (process.env.PROFILE) {
    const { profile } = await cdp.send('Profiler.stop');
    const selfTime = new Map(); const byId = new Map(profile.nodes.map((n) => [n.id, n]));
    const dt = profile.timeDeltas; let total = 0;
    profile.samples.forEach((id, i) => { const n = byId.get(id); const k = `${n.callFrame.functionName || '(anon)'} ${n.callFrame.url.split('/').pop()}:${n.callFrame.lineNumber}`; selfTime.set(k, (selfTime.get(k) ?? 0) + (dt[i] ?? 0)); total += dt[i] ?? 0; });
    const top = [...selfTime.entries()].sort((a, b) => b[1] - a[1]).slice(0, 25);
    console.log(`profile: ${(total / 1e6).toFixed(2)} s sampled`);
    for (const [k, v] of top) console.log(`  ${(v / 1e3).toFixed(1)} ms  ${k}`);
  }
  const rows = await page.locator('#rounds tbody tr').evaluateAll((trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
  const train = rows.reduce((s, r) => s + parseFloat(r[4]), 0);
  const d = (k) => (b[k] - a[k]);
  console.log(`wall ${d('Timestamp').toFixed(2)} s, training ${train.toFixed(2)} s; main thread: task ${d('TaskDuration').toFixed(3)} s, script ${d('ScriptDuration').toFixed(3)}, layout ${d('LayoutDuration').toFixed(3)} (${d('LayoutCount')}), style ${d('RecalcStyleDuration').toFixed(3)} (${d('RecalcStyleCount')}), nodes ${a.Nodes}->${b.Nodes}`);
  // The tab lists its rounds newest first.
  console.log(`rounds 1–${rows.length}:`, rows.map((r) => r[5]).reverse().join(' | '));
  await context.close();
} finally { await browser.close(); await server.stop(); }
