// Training speed in Chromium, for scripts/bench-speed.sh (BENCHMARKS.md, issue 17):
//   1. the DP-SGD and plain steps in one dedicated worker (the same `learning::bench` code as the
//      native `throughput` binary), batch 64 and 512, median of 3;
//   2. real training rounds of one tab (a 6 000-example shard, 1 local epoch, σ 1.1) on 1 worker
//      and on N (the device's cores): the examples per second the tab reports for each round and
//      the round's time, median of a run's 3 rounds, interleaved 1 and N workers, RUNS (3) runs:
//      the median of their medians, and each run's. Nothing watches the page while these rounds
//      train (this script asks the server, once a second, whether the run is over): on a 2-core
//      machine, a harness polling the page and a frame counter are CPU the workers lose.
//   3. the same rounds again, watched: the page's animation frames per second and longest gap
//      between frames while it trains (a requestAnimationFrame loop; the tab polled every 100 ms).
//
//   SERVER_BIN=target/release/server node e2e/bench-speed.mjs     (DIST: the trunk build)
// ROUNDS_ONLY=1 runs part 2 alone (for A/B runs of two builds, RUNS=1 each, interleaved);
// BATCHES=64 (default 64,512) limits it to those batch sizes; ROUNDS (default 3) rounds a run;
// HIDE=1 hides the page's body while unwatched rounds train.
// Prints `key value` lines (read by bench-speed.sh) after a human-readable log.
import { ROUNDS_LISTED, createSpeedRun, frameStats, launchChromium, recordFrames, startServer, stepRatesInWorker, trainingWindows, waitFor } from './harness.mjs';

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const results = [];
const roundsPerRun = Number(process.env.ROUNDS ?? 3);
const put = (key, value) => results.push(`${key} ${value}`);

const server = await startServer(Number(process.env.BENCH_PORT ?? 3387));
const browser = await launchChromium();
try {
  // --- 1. The step benchmark in one dedicated worker.
  const page = await (await browser.newContext()).newPage();
  await page.goto(`${server.base}/`);
  await page.waitForSelector('#join');
  const cores = Number(process.env.WORKERS ?? await page.evaluate(() => Math.min(navigator.hardwareConcurrency || 1, 16)));
  const roundsOnly = Boolean(process.env.ROUNDS_ONLY);
  const steps = roundsOnly ? {} : await stepRatesInWorker(page, server.base, [['dp', 64, 40], ['plain', 64, 40], ['distributed', 64, 20], ['dp', 512, 6], ['plain', 512, 6], ['distributed', 512, 4]]);
  console.log('## TinyCNN steps in one Chromium dedicated worker (samples/s; runs)');
  for (const [k, runs] of Object.entries(steps)) {
    console.log(`${k.padEnd(10)} ${median(runs).toFixed(0)}   (${runs.map((r) => r.toFixed(0)).join(', ')})`);
    put(`chromium-step-${k}`, median(runs).toFixed(0));
  }
  await page.context().close();

  // --- 2. Real rounds on 1 and on N workers, unwatched, interleaved.
  const counts = [...new Set([1, cores])];
  const runs = Number(process.env.RUNS ?? 3);
  for (const batch of (process.env.BATCHES ?? '64,512').split(',').map(Number)) {
    const by = new Map(counts.map((w) => [w, { speeds: [], seconds: [] }]));
    for (let run = 0; run < runs; run++) {
      for (const workers of counts) {
        const r = await rounds(batch, workers, false);
        console.log(`## batch ${batch}, ${workers} worker(s), run ${run + 1}, unwatched: rounds 1–${r.speeds.length} at ${r.speeds.join(', ')} samples/s; `
          + `${r.seconds.map((s) => s.toFixed(2)).join(', ')} s`);
        by.get(workers).speeds.push(median(r.speeds));
        by.get(workers).seconds.push(median(r.seconds));
      }
    }
    for (const [workers, r] of by) {
      const key = `chromium-round-${batch}-${workers}w`;
      console.log(`## batch ${batch}, ${workers} worker(s): runs' medians ${r.speeds.join(', ')} samples/s`);
      put(`${key}-samples`, median(r.speeds).toFixed(0));
      put(`${key}-runs`, r.speeds.join(','));
      put(`${key}-seconds`, median(r.seconds).toFixed(2));
    }
  }
  // --- 3. Watched rounds: the page's frame rate while they train.
  for (const batch of roundsOnly ? [] : [64, 512]) {
    for (const workers of counts) {
      const r = await rounds(batch, workers, true);
      const key = `chromium-round-${batch}-${workers}w`;
      console.log(`## batch ${batch}, ${workers} worker(s), watched: rounds 1–${r.speeds.length} at ${r.speeds.join(', ')} samples/s; `
        + `${r.fps.map((f) => f.toFixed(1)).join(', ')} frames/s; longest frame gaps ${r.gaps.map((g) => g.toFixed(0)).join(', ')} ms`);
      put(`${key}-watched-samples`, median(r.speeds).toFixed(0));
      put(`${key}-fps`, median(r.fps).toFixed(1));
      put(`${key}-gap`, median(r.gaps).toFixed(0));
    }
  }
  put('workers', cores);
  console.log(results.join('\n'));
} finally {
  await browser.close();
  await server.stop();
}

/** One run of ROUNDS (3) rounds for one tab joined with `workers`: per round, the tab's samples/s and
 * time; `watch`ed, also the page's frame rate and longest frame gap while it trained. */
async function rounds(batch, workers, watch) {
  const id = await createSpeedRun(server, {
    name: `speed-${batch}-${workers}`, rounds: roundsPerRun, batch, learningRate: batch === 64 ? 0.5 : 2,
  });
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${server.base}/`);
  await page.fill('#workers', String(workers));
  await page.click('#join');
  await waitFor('the tab to get its shard', () => page.$('#histogram'), 120_000);
  // HIDE=1: the page's body is not displayed while the rounds train (its DOM still updates, but
  // nothing is laid out or painted): how much the page's drawing costs the workers.
  if (process.env.HIDE === '1' && !watch) await page.evaluate(() => { document.body.style.display = 'none'; });
  const finished = async () => (await server.api(`/api/admin/runs/${id}`)).body?.run.status === 'finished';
  if (watch) await recordFrames(page);
  await server.api(`/api/admin/runs/${id}/start`, { method: 'POST' });
  let out;
  if (watch) {
    out = await frameStats(page, await trainingWindows(page, roundsPerRun));
  } else {
    // Nothing touches the page until the run is over: only the server is asked, once a second.
    await waitFor(`run ${id} to finish`, finished, 300_000, 1000);
    const listed = Math.min(roundsPerRun, ROUNDS_LISTED); // the page lists the latest
    if (process.env.HIDE === '1') await page.evaluate(() => { document.body.style.display = ''; });
    await waitFor(`the tab to show ${listed} rounds`, () => page.evaluate((n) => document.querySelectorAll('#rounds tbody tr').length >= n, listed), 30_000);
    out = await frameStats(page, []); // the tab's rounds table; no frames were counted
  }
  await context.close();
  // A watched run may still be evaluating its last round; the next run starts after it.
  if (watch) await waitFor(`run ${id} to finish`, finished, 120_000);
  // The tab lists its rounds newest first: in round order here (logs before 2026-12-04T20:00Z,
  // "rounds at …", are newest first).
  const rows = [...out.rows].reverse();
  return {
    speeds: rows.map((r) => Number(r[5].split(' samples/s')[0].replace(/\D/g, ''))),
    seconds: rows.map((r) => parseFloat(r[4])),
    fps: out.stats.map((s) => s.fps),
    gaps: out.stats.map((s) => s.maxGap),
  };
}
