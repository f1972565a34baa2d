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
for (const [name, kind] of [['plain step', 'plain'], ['DP-SGD step', 'dp'], ['distributed', 'distributed'], ['inference', 'inference']]) {
  const rates = [];
  for (let r = 0; r < runs; r++) rates.push(trainThroughput(kind, batch, iters));
  const sorted = [...rates].sort((a, b) => a - b);
  const median = sorted[Math.floor(sorted.length / 2)];
  console.log(`${name.padEnd(12)} ${median.toFixed(0).padStart(8)} samples/s   (runs: ${rates.map((r) => r.toFixed(0)).join(', ')})`);
}

// What the gemm kernels reach here: each matrix product of a batch-64 DP step alone.
const { gemmRates } = require(path.resolve(dir, 'client_wasm.js'));
gemmRates(); // warm-up
console.log('the step\'s matrix products alone (batch 64):');
for (const line of gemmRates().trim().split('\n')) {
  const [name, ms, gflops] = line.split('\t');
  console.log(`  ${name.padEnd(62)} ${ms.padStart(7)} ms  ${gflops.padStart(6)} GFLOP/s`);
}

if (process.env.TRAINING_ONLY) process.exit(0);

// The accountants in wasm: one ε evaluation and one σ solve (the native `accountant-cost`).
const { accountantMs, accountantCases } = require(path.resolve(dir, 'client_wasm.js'));
const names = accountantCases();
console.log('accountant costs, wasm, median [min–max] of 3 (ms: one ε evaluation / one σ solve for ε = 3)');
const summary = (xs) => { const s = [...xs].sort((a, b) => a - b); return `${s[1].toFixed(1)} [${s[0].toFixed(1)}–${s[2].toFixed(1)}]`; };
names.forEach((name, i) => {
  const cells = [true, false].map((pld) => {
    const runs = [0, 1, 2].map(() => accountantMs(i, pld));
    return `${pld ? 'PLD' : 'RDP'} ${summary(runs.map((r) => r[0]))} / ${summary(runs.map((r) => r[1]))}`;
  });
  console.log(`${name.padEnd(52)} ${cells[0]}   ${cells[1]}`);
});
