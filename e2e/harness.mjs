// What the browser test and the browser benchmark share: a server of our own on a port, an API
// client with the admin token, Debian's Chromium, and polling with a named timeout.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const token = 'e2e-admin-token-0123456789abcdef';

/** Polls `fn` until it returns something truthy; the error names what was awaited. */
export async function waitFor(what, fn, timeoutMs = 60_000, everyMs = 250) {
  const until = Date.now() + timeoutMs;
  let last;
  while (Date.now() < until) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
  throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}${last ? `: ${last}` : ''}`);
}

/**
 * The server (SERVER_BIN, default target/debug/server) on 127.0.0.1:`port` with a fresh data
 * directory, no demo run and the built pages (DIST, default dist), and `extraArgs` (a gateway's
 * flags). `restart()` starts it again on the same data; `stop()` ends it and removes the data.
 */
export async function startServer(port, extraArgs = []) {
  const dataDir = mkdtempSync(join(tmpdir(), 'fl-e2e-'));
  const base = `http://127.0.0.1:${port}`;
  const server = {
    base,
    process: null,
    async restart() {
      this.process = spawn(
        process.env.SERVER_BIN ?? 'target/debug/server',
        ['--bind', `127.0.0.1:${port}`, '--data-dir', dataDir, '--admin-token', token, '--no-demo',
         '--static-dir', process.env.DIST ?? 'dist', ...extraArgs],
        { stdio: ['ignore', 'inherit', 'inherit'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' } },
      );
      await waitFor('the server', async () => (await fetch(`${base}/api/health`)).ok, 120_000);
    },
    async kill(signal = 'SIGTERM') {
      const p = this.process;
      // Ended already (by a signal, exitCode stays null): its 'exit' event will not come again.
      if (!p || p.exitCode !== null || p.signalCode !== null) return;
      const exited = new Promise((r) => p.once('exit', r));
      p.kill(signal);
      await exited;
    },
    async stop() {
      await this.kill();
      rmSync(dataDir, { recursive: true, force: true });
    },
    /** An admin API call: `{status, body}` (body parsed as JSON when it is). */
    async api(path, init = {}) {
      const res = await fetch(base + path, {
        ...init,
        headers: { Authorization: `Bearer ${token}`, ...(init.headers ?? {}) },
      });
      return { status: res.status, body: await res.json().catch(() => null) };
    },
  };
  await server.restart();
  return server;
}

/** Debian's Chromium (CHROMIUM, default /usr/bin/chromium), headless; EXTRA_CHROMIUM_ARGS
 * (space-separated) are added, for experiments such as V8 flags (benchmarks/round-profile-1.log). */
export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync', ...(process.env.EXTRA_CHROMIUM_ARGS ? process.env.EXTRA_CHROMIUM_ARGS.split(' ') : [])],
  });
}

/**
 * The training-step benchmark (`trainThroughput`, exported by the worker bundle) in a fresh
 * dedicated worker of `page`, served from `origin`: for each `[kind, batch, iters]` of `cases`,
 * three runs' samples/s, keyed `${kind}-${batch}`.
 */
export function stepRatesInWorker(page, origin, cases) {
  return page.evaluate(async ({ origin, cases }) => {
    const src = `importScripts("${origin}/worker.js");
      wasm_bindgen("${origin}/worker_bg.wasm").then(() => {
        const out = {};
        for (const [kind, batch, iters] of ${JSON.stringify(cases)}) {
          out[kind + "-" + batch] = [1, 2, 3].map(() => wasm_bindgen.trainThroughput(kind, batch, iters));
        }
        postMessage({ bench: out });
      });`;
    const w = new Worker(URL.createObjectURL(new Blob([src], { type: 'text/javascript' })));
    const result = await new Promise((resolve, reject) => {
      w.onmessage = (e) => e.data?.bench && resolve(e.data.bench);
      w.onerror = (e) => reject(new Error(e.message));
    });
    w.terminate();
    return result;
  }, { origin, cases });
}

/**
 * Creates (not starts) the speed benchmarks' run on `server`: `rounds` DP rounds (σ 1.1, C 1,
 * δ 1e-5) of one local epoch in batches of `batch` at `learningRate`, on an IID shard of 10.
 * Returns its id; a run the server refuses is an error that says why.
 */
export async function createSpeedRun(server, { name, rounds, batch, learningRate }) {
  const config = {
    name, rounds, min_clients: 1, round_timeout_secs: 300,
    local_epochs: 1, batching: { batch_size: batch }, learning_rate: learningRate,
    dp: { max_grad_norm: 1, noise_multiplier: 1.1, target_epsilon: null, delta: 1e-5 },
    shards: { scheme: { kind: 'iid' }, num_shards: 10, seed: 1 },
  };
  const created = await server.api('/api/admin/runs', { method: 'POST', body: JSON.stringify(config) });
  if (created.status !== 201) throw new Error(`run not created: ${JSON.stringify(created)}`);
  return created.body.run_id;
}

/** Starts recording `page`'s animation frames (their timestamps, in `window.frames_`). */
export function recordFrames(page) {
  return page.evaluate(() => {
    window.frames_ = [];
    const tick = (t) => { window.frames_.push(t); requestAnimationFrame(tick); };
    requestAnimationFrame(tick);
  });
}

/** Rounds a client tab's table lists, the latest (frontend's `MAX_ROUNDS_LISTED`). */
export const ROUNDS_LISTED = 100;

/**
 * Watches a client tab train until its rounds table has `rounds` rows (or the run is over): for
 * each round, the window [first step shown, its row shown] in the page's `performance.now()`
 * time. Polled every `everyMs` (lightly: the page and its workers share the cores). The table
 * lists a run's latest ROUNDS_LISTED rounds: the windows of the first ROUNDS_LISTED.
 */
export async function trainingWindows(page, rounds, everyMs = 100) {
  rounds = Math.min(rounds, ROUNDS_LISTED);
  const windows = [];
  let current = null;
  for (;;) {
    const s = await page.evaluate(() => ({
      t: performance.now(),
      status: document.querySelector('#train-status')?.textContent ?? '',
      rows: document.querySelectorAll('#rounds tbody tr').length,
      finished: !!document.querySelector('#run-finished'),
    }));
    if (!current && / step /.test(s.status) && windows.length === s.rows) current = { start: s.t, rows: s.rows };
    if (current && s.rows > current.rows) {
      windows.push([current.start, s.t]);
      current = null;
    }
    if (s.rows >= rounds || s.finished) return windows;
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * For each `[start, end]` window: the frames per second `recordFrames` saw in it and the longest
 * gap between two frames (ms); with the cells of the tab's rounds table (newest round first).
 */
export function frameStats(page, windows) {
  return page.evaluate((windows) => {
    const f = window.frames_;
    const stats = windows.map(([a, b]) => {
      const ts = f.filter((t) => t >= a && t <= b);
      let gap = 0;
      for (let i = 1; i < ts.length; i++) gap = Math.max(gap, ts[i] - ts[i - 1]);
      return { fps: (ts.length - 1) / ((b - a) / 1000), maxGap: gap };
    });
    const rows = [...document.querySelectorAll('#rounds tbody tr')].map((tr) => [...tr.children].map((td) => td.textContent));
    return { stats, rows };
  }, windows);
}
