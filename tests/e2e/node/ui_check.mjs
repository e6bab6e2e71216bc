// Browser checks of oxeye's web UI with Debian's chromium driven by playwright-core.
//   node ui_check.mjs <scenario> '<json args>'
// Prints one JSON line with what it measured; exits non-zero with the reason when a check fails.
// Screenshots go to args.shots (the tests keep them as artifacts; README shows one).
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

const [scenario, rawArgs] = process.argv.slice(2);
const args = JSON.parse(rawArgs || '{}');
const base = args.base;
const out = {};

function check(cond, message) {
  if (!cond) throw new Error(message);
}

async function launch(options = {}) {
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 }, ...options });
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', e => problems.push(`page error: ${e}`));
  page.on('console', m => { if (m.type() === 'error') problems.push(`console error: ${m.text()}`); });
  // Nothing may come from outside the server.
  const outside = [];
  page.on('request', r => { if (!r.url().startsWith(base) && !r.url().startsWith('data:')) outside.push(r.url()); });
  return { browser, page, problems, outside };
}

async function open(page, path, { hydrate = true } = {}) {
  const response = await page.goto(base + path);
  check(response && response.status() === 200, `${path} answered ${response && response.status()}`);
  if (hydrate) await page.waitForSelector('html[data-hydrated]', { timeout: 30000 });
  return response;
}

async function shot(page, name) {
  if (!args.shots) return;
  mkdirSync(args.shots, { recursive: true });
  await page.screenshot({ path: `${args.shots}/${name}.png` });
}

const scenarios = {
  // Every page loads, hydrates without errors, and fetches nothing from outside.
  async pages() {
    const { browser, page, problems, outside } = await launch();
    const pages = [
      ['traces', '/traces?lookback=1h'],
      ['trace', `/traces/${args.trace_id}`],
      ['services', '/services'],
      ['service', '/services/frontend'],
      ['logs', '/logs'],
      ['metrics', '/explore?name=http.server.request.count&group_by=http.route'],
      ['sql', '/sql?q=' + encodeURIComponent('SELECT service_name, count(*) AS spans FROM spans GROUP BY 1 ORDER BY 2 DESC')],
      ['alerts-empty', '/alerts'],
    ];
    for (const [name, path] of pages) {
      await open(page, path);
      check(!(await page.locator('.state.error').count()), `${path} shows an error: ${await page.locator('.state.error').allInnerTexts()}`);
      check(await page.locator('h1').count() > 0, `${path} has no heading`);
      await shot(page, name);
    }
    check(problems.length === 0, problems.join('\n'));
    check(outside.length === 0, `requests outside oxeye: ${outside}`);
    out.pages = pages.length;
    await browser.close();
  },

  // Search by service with the form, then click a result and get its waterfall.
  async search() {
    const { browser, page, problems } = await launch();
    await open(page, '/traces');
    await page.selectOption('select[name=service]', 'checkout');
    await page.fill('input[name=operation]', 'POST /checkout');
    await page.click('button:has-text("Find traces")');
    await page.waitForURL(/service=checkout/);
    check(page.url().includes('operation=POST'), `operation not in URL: ${page.url()}`);
    await page.waitForSelector('table.results tbody tr');
    // A trace matches when one of its spans does: checkout's spans sit under frontend's root.
    const roots = await page.locator('table.results tbody td.services').allInnerTexts();
    check(roots.length > 0 && roots.every(r => r.includes('checkout')), `services: ${roots}`);
    out.results = roots.length;
    const dots = await page.locator('svg circle.dot').count();
    check(dots === roots.length, `${dots} scatter dots for ${roots.length} results`);
    const firstId = (await page.locator('table.results .trace-id').first().innerText()).trim();
    await page.locator('table.results .trace-link').first().click();
    await page.waitForURL(new RegExp(`/traces/${firstId}`));
    await page.waitForSelector('.wf-row');
    const api = await (await page.request.get(`${base}/api/v1/traces/${firstId}`)).json();
    const rowIds = await page.locator('.wf-row').evaluateAll(rows => rows.map(r => r.dataset.spanId));
    const apiIds = new Set(api.spans.map(s => s.span_id));
    check(rowIds.length === api.spans.length, `${rowIds.length} rows for ${api.spans.length} spans`);
    check(rowIds.every(id => apiIds.has(id)), 'a row is not a span of the trace');
    // The back button returns to the same search.
    await page.goBack();
    await page.waitForURL(/service=checkout/);
    await page.waitForSelector('table.results tbody tr');
    check(await page.inputValue('input[name=operation]') === 'POST /checkout', 'operation lost after back');
    check(problems.length === 0, problems.join('\n'));
    await browser.close();
  },

  // The trace view: detail panel, logs of the trace, collapse, find, critical path, URL state.
  async waterfall() {
    const { browser, page, problems } = await launch();
    const id = args.trace_id;
    const api = await (await page.request.get(`${base}/api/v1/traces/${id}`)).json();
    const logs = await (await page.request.get(`${base}/api/v1/logs?trace_id=${id}`)).json();
    await open(page, `/traces/${id}`);
    const rows = page.locator('.wf-row');
    check(await rows.count() === api.spans.length, `rows ${await rows.count()} != spans ${api.spans.length}`);
    const root = api.spans.find(s => !s.parent_span_id);
    check(await rows.first().getAttribute('data-span-id') === root.span_id, 'the first row is not the root');
    // The trace's logs are listed, linked to their spans.
    const bodies = await page.locator('ul.log-list > li .body').allInnerTexts();
    for (const l of logs.logs) check(bodies.includes(l.body), `log "${l.body}" missing from the trace view`);
    out.logs = bodies.length;
    // Click a child span: the panel shows it and the URL names it.
    const child = api.spans.find(s => s.parent_span_id && Object.keys(s.attributes).length > 0);
    await page.locator(`.wf-row[data-span-id="${child.span_id}"] a.span-link`).click();
    await page.waitForURL(new RegExp(`span=${child.span_id}`));
    const panel = page.locator('aside.detail');
    await panel.waitFor();
    check((await panel.innerText()).includes(child.span_id), 'the detail panel does not show the span');
    const [key, value] = Object.entries(child.attributes)[0];
    check((await panel.innerText()).includes(key), `attribute ${key} not in the panel`);
    await shot(page, 'trace-detail');
    // Collapse the root: one row left; back: all rows again.
    await page.locator('.wf-row').first().locator('a.toggle').click();
    await page.waitForURL(/collapsed=/);
    await page.waitForFunction(() => document.querySelectorAll('.wf-row').length === 1);
    await page.goBack();
    await page.waitForFunction(n => document.querySelectorAll('.wf-row').length === n, api.spans.length);
    // Find in trace highlights matches.
    const service = child.service_name;
    await page.fill('input[name=find]', service);
    await page.press('input[name=find]', 'Enter');
    await page.waitForURL(/find=/);
    const expected = api.spans.filter(s => s.service_name === service).length;
    await page.waitForFunction(n => document.querySelectorAll('.wf-row.match').length >= n, expected);
    // Critical path toggles from the URL.
    await page.click('a:has-text("Critical path: off")');
    await page.waitForURL(/critical=1/);
    check(await page.locator('.wf-bar.critical').count() >= 1, 'no span on the critical path');
    // Reloading the URL restores the same view (shareable link).
    const url = page.url();
    await open(page, url.slice(base.length));
    check(await page.locator('.wf-bar.critical').count() >= 1, 'critical path lost on reload');
    check(await page.inputValue('input[name=find]') === service, 'find lost on reload');
    check((await page.locator('aside.detail').innerText()).includes(child.span_id), 'selection lost on reload');
    check(problems.length === 0, problems.join('\n'));
    await browser.close();
  },

  // A 10,000+ span trace renders a window of rows and scrolls to the last span.
  async large() {
    const { browser, page, problems } = await launch();
    const t0 = Date.now();
    await open(page, `/traces/${args.trace_id}`);
    out.interactive_ms = Date.now() - t0;
    const total = args.spans;
    const shownText = await page.locator('.waterfall .hint').innerText();
    check(shownText.includes(`${total} of ${total}`), `hint says "${shownText}"`);
    const rendered = await page.locator('.wf-row').count();
    check(rendered > 10 && rendered < 300, `${rendered} rows in the DOM for ${total} spans (not virtualised?)`);
    await page.locator('.wf-scroll').evaluate(el => { el.scrollTop = el.scrollHeight; });
    await page.waitForFunction(n => {
      const rows = [...document.querySelectorAll('.wf-row')];
      return rows.some(r => parseFloat(r.style.top) >= (n - 1) * 26);
    }, total);
    out.rendered_rows = rendered;
    check(await page.locator('.wf-row').count() < 300, 'scrolling rendered too many rows');
    await shot(page, 'large-trace');
    check(problems.length === 0, problems.join('\n'));
    await browser.close();
  },

  // The header's box takes a pasted trace id (any case) straight to the trace.
  async goto() {
    const { browser, page, problems } = await launch();
    await open(page, '/logs');
    await page.fill('header .goto input', ` ${args.trace_id.toUpperCase()} `);
    await page.press('header .goto input', 'Enter');
    await page.waitForURL(new RegExp(`/traces/${args.trace_id}$`));
    await page.waitForSelector('.wf-row');
    // And without the client: the server redirects.
    const r = await page.request.get(`${base}/go?trace_id=${args.trace_id}`, { headers: { accept: 'text/html' }, maxRedirects: 0 });
    check(r.status() === 302 && r.headers()['location'] === `/traces/${args.trace_id}`, `server redirect: ${r.status()}`);
    check(problems.length === 0, problems.join('\n'));
    await browser.close();
  },

  // Logs: full text + severity from the form, histogram, expandable row, link to the trace.
  async logs() {
    const { browser, page, problems } = await launch();
    await open(page, '/logs');
    await page.fill('input[name=query]', args.text);
    await page.selectOption('select[name=severity]', 'warn');
    await page.click('button:has-text("Search logs")');
    await page.waitForURL(/severity=warn/);
    // The old list stays while the new one loads (Transition): wait for the matching one.
    await page.waitForFunction(text => {
      const bodies = [...document.querySelectorAll('ul.log-list > li .body')];
      return bodies.length > 0 && bodies.every(b => b.innerText.toLowerCase().includes(text));
    }, args.text.toLowerCase(), { timeout: 30000 });
    const bodies = await page.locator('ul.log-list > li .body').allInnerTexts();
    check(bodies.length > 0, 'no logs found');
    check(bodies.every(b => b.toLowerCase().includes(args.text.toLowerCase())), `a body does not match: ${bodies}`);
    const sev = await page.locator('ul.log-list > li .sev').allInnerTexts();
    check(sev.every(s => ['WARN', 'ERROR', 'FATAL'].includes(s.toUpperCase())), `severities ${sev}`);
    check(await page.locator('figure.chart rect').count() > 0, 'no histogram bars');
    await page.locator('ul.log-list > li summary').first().click();
    check(await page.locator('ul.log-list > li details[open] table.kv').count() > 0, 'attributes do not expand');
    out.logs = bodies.length;
    // Reload keeps the filters.
    await open(page, page.url().slice(base.length));
    check(await page.inputValue('input[name=query]') === args.text, 'query lost on reload');
    const link = page.locator('ul.log-list a.trace-link').first();
    if (await link.count()) {
      await link.click();
      await page.waitForURL(/\/traces\/[0-9a-f]{32}/);
      await page.waitForSelector('.wf-row');
    }
    check(problems.length === 0, problems.join('\n'));
    await browser.close();
  },

  // SQL console: run a query from the editor, see rows and a chart, download CSV.
  async sql() {
    const { browser, page, problems } = await launch();
    await open(page, '/sql');
    const sql = "SELECT service_name, count(*) AS spans FROM spans GROUP BY 1 ORDER BY 2 DESC";
    await page.fill('textarea[name=q]', sql);
    await page.click('button:has-text("Run")');
    await page.waitForURL(/q=SELECT/);
    await page.waitForSelector('table.sql-result tbody tr');
    const header = await page.locator('table.sql-result thead th').allInnerTexts();
    check(header[0].startsWith('service_name') && header[1].startsWith('spans'), `header ${header}`);
    const cells = await page.locator('table.sql-result tbody tr td:first-child').allInnerTexts();
    for (const s of args.services) check(cells.includes(s), `service ${s} missing from ${cells}`);
    check(await page.locator('figure.bars li').count() === cells.length, 'no bar chart of the result');
    const csvHref = await page.locator('a:has-text("Download CSV")').getAttribute('href');
    const csv = await (await page.request.get(base + csvHref)).text();
    check(csv.split('\n')[0].trim() === 'service_name,spans', `CSV header: ${csv.split('\n')[0]}`);
    out.rows = cells.length;
    // A bad query shows the server's message, not a blank page.
    await page.fill('textarea[name=q]', 'SELEC nonsense');
    await page.click('button:has-text("Run")');
    await page.waitForSelector('.state.error');
    check((await page.locator('.state.error').innerText()).includes('SELEC'), 'error does not say what failed');
    // The browser reports the API's 400 for the bad query itself; that one is expected.
    const expected400 = p => p.includes('status of 400');
    for (let i = problems.length - 1; i >= 0; i--) if (expected400(problems[i])) problems.splice(i, 1);
    // Examples are links that run.
    await page.locator('aside.examples a').first().click();
    await page.waitForURL(/q=SELECT/);
    await page.waitForSelector('table.sql-result, .state.empty');
    check(problems.length === 0, problems.join('\n'));
    await browser.close();
  },

  // Alerts: write a SQL rule in the form, dry-run it, save it, and watch it fire on the page.
  async alerts() {
    const { browser, page, problems } = await launch();
    await open(page, '/alerts');
    const name = args.name;
    await page.fill('#rule-name', name);
    await page.click('#rule-mode-sql');
    await page.fill('#rule-sql', args.sql);
    await page.selectOption('#rule-op', '>');
    await page.fill('#rule-threshold', String(args.threshold));
    await page.fill('#rule-interval', '1s');
    await page.fill('#rule-for', '1s');
    await page.selectOption('#rule-severity', 'critical');
    await page.fill('#rule-annotations', 'summary=fired {{ $value }}');
    // Dry run: the compiled SQL and one row per instance, before anything is saved.
    await page.click('#rule-dry-run');
    await page.waitForSelector('tr.dry-run-row, #rule-dry-run-error, #dry-run-result .state', { timeout: 30000 });
    const dryError = page.locator('#rule-dry-run-error, #dry-run-result .state.error');
    check(!(await dryError.count()), `dry run failed: ${await dryError.allInnerTexts()}`);
    out.dry_run_rows = await page.locator('tr.dry-run-row').count();
    check(out.dry_run_rows > 0, 'the dry run shows no instance');
    check(await page.locator('tr.dry-run-row.active').count() > 0, 'no dry-run instance meets the condition');
    const compiled = await page.locator('#dry-run-result pre.sql').textContent();
    check(compiled && compiled.trim().length > 0, 'the dry run does not show the SQL');
    // Save: the server's answer, then the rule in the list.
    await page.click('#rule-save');
    await page.waitForSelector('#rule-saved, #rule-error', { timeout: 30000 });
    const saveError = page.locator('#rule-error');
    check(!(await saveError.count()), `save failed: ${await saveError.allInnerTexts()}`);
    const ruleRow = `tr.rule-row[data-rule-name=${JSON.stringify(name)}]`;
    const alertRow = `tr.alert-row[data-rule-name=${JSON.stringify(name)}]`;
    const firing = async timeout => {
      try {
        await page.waitForFunction(([ruleRow, alertRow]) => {
          const state = document.querySelector(`${ruleRow} .rule-state`);
          return !!(state && state.innerText.includes('firing') && document.querySelector(alertRow));
        }, [ruleRow, alertRow], { timeout });
        return true;
      } catch {
        return false;
      }
    };
    // The lists refresh by themselves every 5 s; reloading (a fresh server render) is the fallback.
    out.refresh = 'auto';
    let fired = await firing(20000);
    for (let i = 0; !fired && i < 5; i++) {
      out.refresh = 'reload';
      await open(page, '/alerts');
      fired = await firing(2000);
    }
    const state = await page.locator(`${ruleRow} .rule-state`).allInnerTexts();
    check(fired, `rule ${name} is not shown firing: state ${JSON.stringify(state)}, ` +
      `${await page.locator(alertRow).count()} active alert rows`);
    await page.locator(alertRow).first().scrollIntoViewIfNeeded();
    await shot(page, 'alerts');
    check(problems.length === 0, problems.join('\n'));
    await browser.close();
  },

  // Telemetry text is shown, never run.
  async xss() {
    const { browser, page, problems } = await launch();
    await page.addInitScript(() => { window.__xss = 0; });
    await open(page, `/traces/${args.trace_id}?span=${args.span_id}`);
    const panel = await page.locator('aside.detail').innerText();
    check(panel.includes(args.payload), 'the script text is not shown as text');
    check(await page.evaluate(() => window.__xss) === 0, 'a telemetry script ran');
    await open(page, `/traces?service=${encodeURIComponent(args.service)}`);
    check(await page.evaluate(() => window.__xss) === 0, 'a telemetry script ran on search');
    check(problems.length === 0, problems.join('\n'));
    await browser.close();
  },

  // With API tokens on: a page leads to the login form; wrong and ingest-only tokens are told
  // why on the page; a read token signs in to where the user was going, with a session cookie
  // scripts cannot read; the page's own API calls work with it; signing out ends it.
  async login() {
    const { browser, page, problems } = await launch();
    await page.goto(base + '/services');
    let url = new URL(page.url());
    check(url.pathname === '/login', `not sent to the login page: ${page.url()}`);
    check(url.searchParams.get('next') === '/services', `the way back is lost: ${page.url()}`);
    await shot(page, 'login');
    for (const [token, said] of [['not-a-token', 'not valid'], [args.ingest_token, 'ingest role']]) {
      await page.fill('input[name=token]', token);
      await Promise.all([page.waitForLoadState('load'), page.click('button[type=submit]')]);
      check(new URL(page.url()).pathname === '/login', `signed in with ${token}`);
      const alert = await page.locator('.error[role=alert]').innerText();
      check(alert.includes(said), `the page says "${alert}", not "${said}"`);
    }
    await page.fill('input[name=token]', args.read_token);
    await Promise.all([page.waitForURL(base + '/services'), page.click('button[type=submit]')]);
    await page.waitForSelector('html[data-hydrated]', { timeout: 30000 });
    check(!(await page.locator('.state.error').count()), 'the services page shows an error after signing in');
    const session = (await page.context().cookies()).find(c => c.name === 'oxeye_session');
    check(session && session.httpOnly && session.sameSite === 'Strict', `session cookie ${JSON.stringify(session)}`);
    check(!(await page.evaluate(() => document.cookie)).includes('oxeye_session'), 'scripts can read the session');
    // A page that loads its data through the API after hydration.
    await open(page, '/sql');
    await page.fill('textarea[name=q]', 'SELECT 6 * 7 AS answer');
    await page.click('button:has-text("Run")');
    await page.waitForSelector('table.sql-result tbody tr', { timeout: 30000 });
    const answer = await page.locator('table.sql-result tbody tr td:first-child').innerText();
    check(answer.trim() === '42', `the SQL console answered ${answer}`);
    await shot(page, 'signed-in-sql');
    await page.goto(base + '/logout');
    check(new URL(page.url()).pathname === '/login', `logout went to ${page.url()}`);
    await page.goto(base + '/traces');
    check(new URL(page.url()).pathname === '/login', 'still signed in after logging out');
    const status = await page.evaluate(async () => (await fetch('/api/v1/services')).status);
    check(status === 401, `the API answered ${status} after logging out`);
    // The browser reports the refused logins (401, 403) and that last 401 itself: expected.
    const refused = p => /status of 40[13]/.test(p);
    check(problems.filter(p => !refused(p)).length === 0, problems.join('\n'));
    out.signed_in = true;
    await browser.close();
  },

  // Without JavaScript the server's HTML has the content and working links.
  async nojs() {
    const { browser, page } = await launch({ javaScriptEnabled: false });
    await open(page, '/traces', { hydrate: false });
    const href = await page.locator('table.results .trace-link').first().getAttribute('href');
    check(/^\/traces\/[0-9a-f]{32}$/.test(href), `result link ${href}`);
    await page.locator('table.results .trace-link').first().click();
    await page.waitForSelector('.wf-row');
    const row = page.locator('.wf-row').nth(1);
    const spanId = await row.getAttribute('data-span-id');
    await row.locator('a.span-link').click();
    await page.waitForURL(new RegExp(`span=${spanId}`));
    check((await page.locator('aside.detail').innerText()).includes(spanId), 'no-JS detail panel');
    await open(page, '/services', { hydrate: false });
    check(await page.locator('svg a.node').count() >= 2, 'no service map without JS');
    await browser.close();
  },
};

try {
  check(scenarios[scenario], `unknown scenario ${scenario}`);
  await scenarios[scenario]();
  console.log(JSON.stringify({ ok: true, ...out }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e && e.stack || e), ...out }));
  process.exit(1);
}
