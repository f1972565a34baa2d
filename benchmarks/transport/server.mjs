// Serves this folder on 127.0.0.1:$PORT (8765) with the two headers that make a page
// cross-origin isolated (SharedArrayBuffer and Atomics.wait available to its workers).
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const dir = path.dirname(fileURLToPath(import.meta.url));
const types = { html: 'text/html', js: 'text/javascript' };
export function serve(port = Number(process.env.PORT ?? 8765)) {
  const server = http.createServer((req, res) => {
    const name = req.url === '/' ? 'index.html' : path.basename(req.url.split('?')[0]);
    fs.readFile(path.join(dir, name), (err, body) => {
      if (err) { res.writeHead(404); res.end(); return; }
      res.writeHead(200, {
        'content-type': types[name.split('.').pop()] ?? 'application/octet-stream',
        'Cross-Origin-Opener-Policy': 'same-origin',
        'Cross-Origin-Embedder-Policy': 'require-corp',
      });
      res.end(body);
    });
  });
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve(server)));
}
