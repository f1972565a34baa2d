// The "training worker": per step it hands the helper (h.js) the parameters and its half of the
// images, computes its own half, waits for the helper's answer (a gradient-sized array) and
// reads it — by postMessage with the arrays transferred and sent back (what client-wasm's pool
// does), or through a SharedArrayBuffer with Atomics (async: Atomics.waitAsync on both sides;
// sync: Atomics.wait). 'solo' computes both halves itself: the 1-worker step.
importScripts('work.js');
const params = new Float32Array(DIM).fill(0.5), images = new Float32Array(IMAGES).fill(0.25);

onmessage = async ({ data: { mode, steps, half, memoryKb } }) => {
  useMemory(memoryKb);
  const times = [];
  const timed = async (step) => { const t0 = performance.now(); await step(); times.push(performance.now() - t0); };
  if (mode === 'solo') {
    for (let i = 0; i < steps; i++) await timed(() => work(2 * half));
    postMessage({ times });
    return;
  }
  const helper = new Worker('h.js');
  if (mode === 'post') {
    let answered = null;
    helper.onmessage = (e) => answered(e.data);
    const reply = () => new Promise((resolve) => { answered = resolve; });
    let ready = reply(); helper.postMessage({ mode, half, memoryKb }); await ready;
    let spare = null;
    for (let i = 0; i < steps; i++) await timed(async () => {
      const p = spare ? spare.p : new Float32Array(DIM), im = spare ? spare.im : new Float32Array(IMAGES);
      p.set(params); im.set(images);
      const got = reply();
      helper.postMessage({ slice: JSON.stringify({ seq: i }), p, im }, [p.buffer, im.buffer]);
      work(half);
      const d = await got;
      spare = { p: d.p, im: d.im };
    });
  } else {
    const sab = new SharedArrayBuffer(16 + (DIM + IMAGES) * 4);
    const state = new Int32Array(sab, 0, 4);
    const p = new Float32Array(sab, 16, DIM), im = new Float32Array(sab, 16 + DIM * 4, IMAGES);
    const sum = new Float32Array(DIM);
    await new Promise((resolve) => { helper.onmessage = resolve; helper.postMessage({ mode, half, sab, memoryKb }); });
    for (let i = 0; i < steps; i++) await timed(async () => {
      p.set(params); im.set(images);
      Atomics.store(state, 0, 1); Atomics.notify(state, 0); // asked
      work(half);
      while (Atomics.load(state, 0) !== 2) {
        if (mode === 'sab-sync') Atomics.wait(state, 0, 1, 1000);
        else { const w = Atomics.waitAsync(state, 0, 1); if (w.async) await w.value; }
      }
      sum.set(p); Atomics.store(state, 0, 0);
    });
  }
  helper.terminate();
  postMessage({ times });
};
