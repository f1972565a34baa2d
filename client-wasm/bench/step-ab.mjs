// Interleaved A/B of two or more builds of the DP-SGD step, by each step's time (medians are
// robust to this VM's slow spells; `step-times.mjs`): for each round, each build in turn (the
// order alternating between rounds), one setup of STEPS steps at BATCH,
//   native 1: one `throughput --step-times` process;
//   native 2: two such processes side by side (the two cores contend, as two workers do);
//   threads 2: one such process whose steps share each batch between 2 threads (`--threads 2`);
//   node 1 / node 2: the same in wasm, `trainStepTimes` in one node process / two side by side.
// Prints each arm's median µs an example and its mean (for "2", averaged over the two processes).
//
//   BUILDS=8:/tmp/ab/8,4:/tmp/ab/4 node client-wasm/bench/step-ab.mjs
// where each build's directory holds `throughput` (cargo build --release -p learning --bin
// throughput) and `wasm/` (`wasm-bindgen --target nodejs` of the client-wasm bench build, as
// scripts/bench-wasm.sh makes it). ROUNDS (4), STEPS (800), BATCH (64),
// MODES (default native1,native2,node1,node2; threads2 too).
import { spawn } from 'node:child_process';
import path from 'node:path';

const builds = (process.env.BUILDS ?? '').split(',').filter(Boolean).map((b) => {
  const [name, dir] = b.split(':');
  if (!name || !dir) throw new Error(`BUILDS entry "${b}": expected name:directory`);
  return { name, dir: path.resolve(dir) };
});
if (builds.length < 2) throw new Error('BUILDS: expected at least two name:directory entries');
const rounds = Number(process.env.ROUNDS ?? 4);
const steps = Number(process.env.STEPS ?? 800);
const batch = Number(process.env.BATCH ?? 64);
const modes = (process.env.MODES ?? 'native1,native2,node1,node2').split(',');

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** Runs a command to its end; its stdout parsed as the JSON array of step ms. */
function times(cmd, args) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`${cmd} exited ${code}`))));
  });
}

function one(build, where, threads = 1) {
  if (where === 'native') {
    const args = ['--step-times', String(steps), '--batch', String(batch), '--threads', String(threads)];
    return times(path.join(build.dir, 'throughput'), args);
  }
  const lib = JSON.stringify(path.join(build.dir, 'wasm', 'client_wasm.js'));
  const code = `console.log(JSON.stringify(Array.from(require(${lib}).trainStepTimes('dp', ${batch}, ${steps}))))`;
  return times(process.execPath, ['-e', code]);
}

const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;

/** `copies` processes of `build` side by side: [median, mean] µs an example (mean over them).
 * The median is robust to slow spells; the mean is what throughput sees (tails included). */
async function arm(build, mode) {
  if (!/^(native[12]|node[12]|threads2)$/.test(mode)) {
    throw new Error(`MODES: unknown mode "${mode}": expected native1, native2, node1, node2 or threads2`);
  }
  const threads = mode === 'threads2' ? 2 : 1;
  const where = mode === 'threads2' ? 'native' : mode.replace(/[0-9]+$/, '');
  const copies = mode === 'threads2' ? 1 : Number(mode.slice(where.length));
  const runs = await Promise.all(Array.from({ length: copies }, () => one(build, where, threads)));
  const us = (ms) => (ms / batch) * 1000;
  return [mean(runs.map((r) => us(median(r)))), mean(runs.map((r) => us(mean(r))))];
}

console.log(`# step A/B, batch ${batch}, ${steps} steps an arm, ${rounds} rounds, ${new Date().toISOString()}`);
console.log(`# builds: ${builds.map((b) => `${b.name}=${b.dir}`).join(' ')}`);
const results = Object.fromEntries(modes.map((m) => [m, Object.fromEntries(builds.map((b) => [b.name, []]))]));
for (let r = 1; r <= rounds; r++) {
  const order = r % 2 ? builds : [...builds].reverse();
  for (const mode of modes) {
    const line = [];
    for (const build of order) {
      const [med, avg] = await arm(build, mode);
      results[mode][build.name].push([med, avg]);
      line.push(`${build.name} ${med.toFixed(1)} (mean ${avg.toFixed(1)})`);
    }
    console.log(`round ${r} ${mode}: ${line.join(', ')} µs an example`);
  }
}
console.log('# medians over the rounds of the step median (and of the step mean), µs an example (lower is faster):');
for (const mode of modes) {
  const cell = (b) => {
    const rs = results[mode][b.name];
    return `${b.name} ${median(rs.map((x) => x[0])).toFixed(1)} (${median(rs.map((x) => x[1])).toFixed(1)})`;
  };
  console.log(`${mode}: ${builds.map(cell).join(', ')}`);
}
