// Secure aggregation's client cost inside Chromium: one member's CPU time per round (keys,
// shares, unsealing + encoding + masking TinyCNN's update, reveal) in a dedicated worker, with
// the worker bundle's `secaggMemberMs` — the same simulated round as the native
// `cargo run -p secagg --release --bin secagg-cost` (median member; median of 3 runs, and the range).
//
//   SERVER_BIN=target/release/server node e2e/bench-secagg.mjs
import { launchChromium, startServer } from './harness.mjs';

const server = await startServer(Number(process.env.BENCH_PORT ?? 3391));
const browser = await launchChromium();
try {
  const page = await browser.newPage();
  await page.goto(`${server.base}/`);
  await page.waitForSelector('#join');
  const result = await page.evaluate(async (origin) => {
    const src = `importScripts("${origin}/worker.js");
      wasm_bindgen("${origin}/worker_bg.wasm").then(() => {
        const out = {};
        for (const [n, k] of [[10, 16], [100, 16], [1000, 16]]) {
          out[n] = [1, 2, 3].map(() => wasm_bindgen.secaggMemberMs(n, k));
        }
        postMessage({ bench: out });
      });`;
    const w = new Worker(URL.createObjectURL(new Blob([src], { type: 'text/javascript' })));
    const r = await new Promise((resolve, reject) => {
      w.onmessage = (e) => e.data?.bench && resolve(e.data.bench);
      w.onerror = (e) => reject(new Error(e.message));
    });
    w.terminate();
    return r;
  }, server.base);
  console.log('## secure aggregation, one member per round in a Chromium worker (ms, median of 3 [min–max])');
  for (const [n, runs] of Object.entries(result)) {
    const s = [...runs].sort((a, b) => a - b);
    console.log(`n=${n} neighbours=${Math.min(16, n - 1)}: ${s[1].toFixed(2)} ms [${s[0].toFixed(2)}–${s[2].toFixed(2)}]`);
  }
} finally {
  await browser.close();
  await server.stop();
}
