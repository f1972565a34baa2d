// The helper: its half of each step, the answer written over the parameters' array.
importScripts('work.js');
const mine = new Float32Array(DIM), myImages = new Float32Array(IMAGES);

onmessage = async ({ data: { mode, half, sab, memoryKb } }) => {
  useMemory(memoryKb);
  if (mode === 'post') {
    onmessage = ({ data: d }) => {
      JSON.parse(d.slice); myImages.set(d.im); work(half); d.p.set(mine);
      postMessage({ slice: '{"done":true}', p: d.p, im: d.im }, [d.p.buffer, d.im.buffer]);
    };
    postMessage('ready');
    return;
  }
  const state = new Int32Array(sab, 0, 4);
  const p = new Float32Array(sab, 16, DIM), im = new Float32Array(sab, 16 + DIM * 4, IMAGES);
  postMessage('ready');
  for (;;) {
    while (Atomics.load(state, 0) !== 1) {
      const seen = Atomics.load(state, 0);
      if (mode === 'sab-sync') Atomics.wait(state, 0, seen, 1000);
      else { const w = Atomics.waitAsync(state, 0, seen); if (w.async) await w.value; }
    }
    myImages.set(im); mine.set(p); work(half); p.set(mine);
    Atomics.store(state, 0, 2); Atomics.notify(state, 0); // answered
  }
};
