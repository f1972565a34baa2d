// A fixed amount of arithmetic (not a fixed time: a worker descheduled by the OS takes longer,
// as a real slice would). One iteration is a dependent multiply-add.
function work(iterations) {
  let x = 1.0;
  for (let i = 0; i < iterations; i++) x = x * 1.0000001 + 1e-9;
  return x;
}
// A step's data, the sizes of TinyCNN at batch 64 on 2 workers: the parameters (12 810
// floats) and half the batch's images (32 × 784 floats).
const DIM = 12810, IMAGES = 32 * 784;
