// A fixed amount of work (not a fixed time: a worker descheduled by the OS takes longer, as a
// real slice would). One iteration is a dependent multiply-add; with MEMORY_KB set (by the
// page's `memoryKb`), it also reads and writes one float of a buffer that size, in order,
// so the halves also stream memory (the real step's chunk buffers are meant to stay in L2).
let buffer = null;
function work(iterations) {
  let x = 1.0;
  if (!buffer) {
    for (let i = 0; i < iterations; i++) x = x * 1.0000001 + 1e-9;
    return x;
  }
  const n = buffer.length;
  for (let i = 0, j = 0; i < iterations; i++, j = j + 1 === n ? 0 : j + 1) {
    x = x * 1.0000001 + buffer[j];
    buffer[j] = x * 1e-9;
  }
  return x;
}
function useMemory(kb) { buffer = kb ? new Float32Array(kb * 256) : null; }
// A step's data, the sizes of TinyCNN at batch 64 on 2 workers: the parameters (12 810
// floats) and half the batch's images (32 × 784 floats).
const DIM = 12810, IMAGES = 32 * 784;
