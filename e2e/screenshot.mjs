// Screenshots of a running server for the README: the dashboard during a run, with some
// browser tabs training beside any simulated clients.
//   node e2e/screenshot.mjs <base-url> <admin-token> [out-dir] [tabs] [min-rounds]
//   node e2e/screenshot.mjs http://127.0.0.1:3000 "$(cat fl-data/admin-token)" docs/ 2 5
import { launchChromium } from './harness.mjs';

const [base, token, out = 'docs/', tabs = '2', minRounds = '5'] = process.argv.slice(2);
if (!base || !token) {
  console.error('usage: node e2e/screenshot.mjs <base-url> <admin-token> [out-dir] [tabs] [min-rounds]');
  process.exit(2);
}
const browser = await launchChromium();
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const clients = [];
  for (let i = 0; i < Number(tabs); i++) {
    const tab = await context.newPage();
    await tab.goto(`${base}/`);
    await tab.fill('#client-name', `browser-tab-${i + 1}`);
    await tab.click('#join');
    clients.push(tab);
  }
  const page = await context.newPage();
  await page.goto(`${base}/admin`);
  await page.fill('#token', token);
  await page.click('#token-form button[type=submit]');
  await page.waitForSelector('#chart-accuracy');
  await page.waitForFunction((n) => Chart.getChart('chart-accuracy')?.data.datasets[0].data.length >= n,
    Number(minRounds), { timeout: 600_000, polling: 500 });
  await page.waitForTimeout(2500); // a clients poll
  await page.screenshot({ path: `${out}dashboard.png`, fullPage: true });
  if (clients.length) {
    await clients[0].bringToFront();
    await clients[0].waitForFunction(() => /step/.test(document.querySelector('#train-status')?.textContent ?? ''), null, { timeout: 120_000, polling: 100 });
    await clients[0].screenshot({ path: `${out}client.png`, fullPage: true });
  }
  console.log(`wrote ${out}dashboard.png${clients.length ? ` and ${out}client.png` : ''}`);
} finally {
  await browser.close();
}
