// Wasm training throughput in node (the same `learning::bench` code as the native binary).
// Run by scripts/bench-wasm.sh after `wasm-bindgen --target nodejs`.
import { createRequire } from 'node:module';
import path from 'node:path';
const require = createRequire(import.meta.url);
const dir = process.argv[2];
const { trainThroughput } = require(path.resolve(dir, 'client_wasm.js'));

const batch = Number(process.env.BATCH ?? 64);
const iters = Number(process.env.ITERS ?? 30);
const runs = Number(process.env.RUNS ?? 3);
console.log(`TinyCNN in wasm (node ${process.version}), batch ${batch}, ${iters} steps × ${runs} runs (median)`);
for (const [name, kind] of [['plain step', 'plain'], ['DP-SGD step', 'dp'], ['inference', 'inference']]) {
  const rates = [];
  for (let r = 0; r < runs; r++) rates.push(trainThroughput(kind, batch, iters));
  const sorted = [...rates].sort((a, b) => a - b);
  const median = sorted[Math.floor(sorted.length / 2)];
  console.log(`${name.padEnd(12)} ${median.toFixed(0).padStart(8)} samples/s   (runs: ${rates.map((r) => r.toFixed(0)).join(', ')})`);
}

// The accountants in wasm: one ε evaluation and one σ solve (the native `accountant-cost`).
const { accountantMs, accountantCases } = require(path.resolve(dir, 'client_wasm.js'));
const names = accountantCases();
console.log('accountant costs, wasm (ms: one ε evaluation / one σ solve for ε = 3)');
names.forEach((name, i) => {
  const [pe, ps] = accountantMs(i, true);
  const [re, rs] = accountantMs(i, false);
  console.log(`${name.padEnd(52)} PLD ${pe.toFixed(1).padStart(8)} / ${ps.toFixed(1).padStart(8)}   RDP ${re.toFixed(2).padStart(6)} / ${rs.toFixed(2).padStart(7)}`);
});
