// Time to interactive of the trace view for one large trace, in headless chromium.
//   node tti.mjs <base url> <trace id> <runs>
// For each run (fresh browser context, so nothing cached): the server-rendered content is
// painted (DOMContentLoaded), and the page is interactive (hydrated: <html data-hydrated>).
// Baseline, same browser, same run: fetching the trace's raw JSON from the API and parsing it,
// the least any client-side trace view has to do before drawing anything.
// playwright-core is installed with the end-to-end tests' npm packages.
import { chromium } from '../../../tests/e2e/node/node_modules/playwright-core/index.mjs';

const [base, traceId, runsText] = process.argv.slice(2);
const runs = Number(runsText || 5);
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const median = xs => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const content = [], interactive = [], baseline = [], rows = [];
let htmlBytes = 0;
for (let i = 0; i < runs; i++) {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const page = await context.newPage();
  const t0 = Date.now();
  const response = await page.goto(`${base}/traces/${traceId}`, { waitUntil: 'domcontentloaded' });
  content.push(Date.now() - t0);
  await page.waitForSelector('html[data-hydrated]', { timeout: 120000 });
  interactive.push(Date.now() - t0);
  htmlBytes = (await response.body()).length;
  rows.push(await page.locator('.wf-row').count());
  baseline.push(await page.evaluate(async url => {
    const t = performance.now();
    const doc = await (await fetch(url, { cache: 'no-store' })).json();
    if (!doc.spans.length) throw new Error('empty trace');
    return performance.now() - t;
  }, `${base}/api/v1/traces/${traceId}`));
  await context.close();
}
await browser.close();
const result = {
  runs,
  html_bytes: htmlBytes,
  rows_in_dom: median(rows),
  content_ms: median(content),
  interactive_ms: median(interactive),
  raw_json_fetch_parse_ms: Math.round(median(baseline)),
};
result.interactive_vs_raw_json = +(result.interactive_ms / result.raw_json_fetch_parse_ms).toFixed(2);
console.log(JSON.stringify(result));
