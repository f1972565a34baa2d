// How a DP-SGD step's time varies: from one step to the next within one setup (model, buffers,
// inputs made once), against between setups (a tab rebuilds its model every round). Issue 17's
// tabs showed "regimes": rounds whose steps all ran ≈ 1.5× slower than other rounds of the same
// run. If one setup's blocks of steps vary as much as fresh setups do, the regimes are the
// host's or the engine's, not where a round's buffers land.
//
//   node client-wasm/bench/step-times.mjs <dir of `wasm-bindgen --target nodejs` output>
//   WHERE=native NATIVE_BIN=…/release/throughput node client-wasm/bench/step-times.mjs
//   WHERE=chromium SERVER_BIN=… DIST=dist node client-wasm/bench/step-times.mjs
//     (the worker bundle in a dedicated worker of a page, as `e2e/bench.mjs` runs it; with
//     PAIRS=k, k pairs of ITERS steps instead: the kept worker's, then a fresh worker's)
// BLOCKS (20) blocks of ITERS (94, a demo round's steps at batch 64) steps of BATCH (64), REPS (3)
// repetitions of both arms, alternated (one setup first in each). Per-example figures use the upper
// of the two middle values as the median. In Chromium the fresh setups run in the same kept worker.
import { createRequire } from 'node:module';
import path from 'node:path';

const blocks = Number(process.env.BLOCKS ?? 20);
const iters = Number(process.env.ITERS ?? 94);
const batch = Number(process.env.BATCH ?? 64);
const reps = Number(process.env.REPS ?? 3);
const where = process.env.WHERE ?? 'node';

const quantile = (xs, q) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
};
const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
/** Lag-1 autocorrelation: how much a step's time says about the next one's. */
const lag1 = (xs) => {
  const m = mean(xs);
  let num = 0;
  let den = 0;
  for (let i = 0; i < xs.length; i++) {
    den += (xs[i] - m) ** 2;
    if (i > 0) num += (xs[i] - m) * (xs[i - 1] - m);
  }
  return num / den;
};

/** One arm's blocks (arrays of step ms) summarised per example (µs). */
function summary(name, blockTimes) {
  const perEx = (ms) => (ms / batch) * 1000;
  const medians = blockTimes.map((b) => perEx(quantile(b, 0.5)));
  const all = blockTimes.flat();
  const f = (x) => x.toFixed(0);
  console.log(`${name}: per example, µs — all steps q10 ${f(perEx(quantile(all, 0.1)))}, median ${f(perEx(quantile(all, 0.5)))}, q90 ${f(perEx(quantile(all, 0.9)))}; `
    + `block medians ${f(Math.min(...medians))}–${f(Math.max(...medians))} (max/min ${(Math.max(...medians) / Math.min(...medians)).toFixed(2)}), `
    + `lag-1 autocorrelation ${lag1(all).toFixed(2)}`);
  console.log(`  block medians: ${medians.map(f).join(' ')}`);
  return { medians, all };
}

/** `run(iters)` → step ms: both arms, alternated. */
async function arms(run) {
  for (let r = 1; r <= reps; r++) {
    const one = await run(blocks * iters);
    const oneBlocks = Array.from({ length: blocks }, (_, i) => one.slice(i * iters, (i + 1) * iters));
    summary(`rep ${r}, one setup (${blocks} blocks of ${iters} steps)`, oneBlocks);
    const fresh = [];
    for (let i = 0; i < blocks; i++) fresh.push(await run(iters));
    summary(`rep ${r}, a fresh setup per block`, fresh);
  }
}

console.log(`DP-SGD step times, batch ${batch}, ${where}, ${new Date().toISOString()}`);
if (where === 'node') {
  if (!process.argv[2]) throw new Error('usage: node client-wasm/bench/step-times.mjs <dir of wasm-bindgen --target nodejs output>');
  const require = createRequire(import.meta.url);
  const { trainStepTimes } = require(path.resolve(process.argv[2], 'client_wasm.js'));
  await arms(async (n) => Array.from(trainStepTimes('dp', batch, n)));
} else if (where === 'native') {
  // Each fresh setup is a fresh process of the `throughput` binary (NATIVE_BIN), one thread.
  const { execFileSync } = await import('node:child_process');
  const bin = process.env.NATIVE_BIN ?? 'target/release/throughput';
  await arms(async (n) => JSON.parse(execFileSync(bin, ['--step-times', String(n), '--batch', String(batch)])));
} else if (where === 'chromium') {
  const { launchChromium, startServer } = await import('../../e2e/harness.mjs');
  const server = await startServer(Number(process.env.BENCH_PORT ?? 3391));
  const browser = await launchChromium();
  try {
    const page = await browser.newPage();
    await page.goto(`${server.base}/`);
    // Workers of the worker bundle that answer `n` with the times of n steps (`worker()`), one
    // kept for the whole measurement, as a tab's training worker lives.
    await page.evaluate(async (origin) => {
      const src = `importScripts("${origin}/worker.js");
        wasm_bindgen("${origin}/worker_bg.wasm").then(() => {
          onmessage = (e) => postMessage({ times: Array.from(wasm_bindgen.trainStepTimes(...e.data)) });
          postMessage({ ready: true });
        }, (e) => postMessage({ failed: String(e) }));`;
      window.benchWorker = async () => {
        const w = new Worker(URL.createObjectURL(new Blob([src], { type: 'text/javascript' })));
        await new Promise((resolve, reject) => {
          w.onmessage = (e) => (e.data?.failed ? reject(new Error(e.data.failed)) : e.data?.ready && resolve());
          w.onerror = (e) => reject(new Error(e.message));
        });
        return w;
      };
      window.benchTimes = (w, args) => new Promise((resolve, reject) => {
        w.onmessage = (e) => (e.data?.times ? resolve(e.data.times) : reject(new Error(JSON.stringify(e.data))));
        w.onerror = (e) => reject(new Error(e.message));
        w.postMessage(args);
      });
      window.benchKept = await window.benchWorker();
    }, server.base);
    const kept = (n) => page.evaluate((args) => window.benchTimes(window.benchKept, args), ['dp', batch, n]);
    const pairs = Number(process.env.PAIRS ?? 0);
    if (pairs > 0) {
      // Does a worker slow down with age? The kept worker's ITERS steps, then a fresh worker's.
      const perEx = (ms) => ((quantile(ms, 0.5) / batch) * 1000).toFixed(0);
      console.log(`${pairs} pairs of ${iters} steps: median µs an example, the kept worker / a fresh one`);
      for (let i = 1; i <= pairs; i++) {
        const a = await kept(iters);
        const b = await page.evaluate(async (args) => {
          const w = await window.benchWorker();
          try { return await window.benchTimes(w, args); } finally { w.terminate(); }
        }, ['dp', batch, iters]);
        console.log(`pair ${i}: kept ${perEx(a)}, fresh ${perEx(b)}`);
      }
    } else {
      await arms(kept);
    }
  } finally {
    await browser.close();
    await server.stop();
  }
} else {
  throw new Error(`WHERE=${where}: expected node, native or chromium`);
}
