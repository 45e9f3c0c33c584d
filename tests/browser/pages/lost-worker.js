// The package's worker (www/src/worker.js) with a test handle on its WebGPU device: every
// GPUDevice the engine asks for is kept, and the page's {op: 'test-destroy'} message destroys
// the latest — a device loss in the middle of whatever the worker is doing. (worker.js answers
// the same message with an error for an unknown op and id, which the client ignores.)
import '/src/worker.js';

const devices = [];
const requestDevice = GPUAdapter.prototype.requestDevice;
GPUAdapter.prototype.requestDevice = async function (...args) {
  const device = await requestDevice.apply(this, args);
  devices.push(device);
  return device;
};
self.addEventListener('message', (e) => {
  if (e.data?.op === 'test-destroy') devices.at(-1)?.destroy();
});
