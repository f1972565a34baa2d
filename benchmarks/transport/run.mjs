// What synchronising two workers at every step costs in Chromium, with a fixed-work stand-in
// for a slice's gradient (BENCHMARKS.md, issue 17, "the transport is not what batch 64 loses"):
//   node benchmarks/transport/run.mjs          HALF=<iterations per half> (2.7e6: ≈ 4.5 ms here, a batch-64 half)
//   MEMORY_KB=<n>: each worker's half also streams through a buffer of n KB (0: registers only)
// For each mode, 5 repetitions of 400 steps (the first 50 dropped): the mean step time; then
// the median of the 5 means and the speed-up over 'solo' (one worker doing both halves).
import { launchChromium } from '../../e2e/harness.mjs';
import { serve } from './server.mjs';

const server = await serve();
const browser = await launchChromium();
const page = await browser.newPage();
await page.goto(`http://127.0.0.1:${server.address().port}/`);
console.log('cross-origin isolated:', await page.evaluate(() => crossOriginIsolated));
const half = Number(process.env.HALF ?? 2.7e6);
const memoryKb = Number(process.env.MEMORY_KB ?? 0);
console.log(`HALF=${half} MEMORY_KB=${memoryKb}`);
const modes = ['solo', 'post', 'sab-async', 'sab-sync'];
const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const means = {};
for (let rep = 0; rep < 5; rep++) {
  for (const mode of modes) {
    const { times } = await page.evaluate((cfg) => window.run(cfg), { mode, steps: 400, half, memoryKb });
    const kept = times.slice(50);
    const mean = kept.reduce((a, b) => a + b, 0) / kept.length;
    (means[mode] ??= []).push(mean);
    console.log(`${rep + 1} ${mode.padEnd(9)} step mean ${mean.toFixed(3)} ms, median ${median(kept).toFixed(3)}, max ${Math.max(...kept).toFixed(2)}`);
  }
}
for (const mode of modes) {
  console.log(`${mode.padEnd(9)} median of means ${median(means[mode]).toFixed(3)} ms; ${(median(means.solo) / median(means[mode])).toFixed(2)}× solo`);
}
await browser.close();
server.close();
