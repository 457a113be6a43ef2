// Headless-browser test of the engine's admin dashboard.
//
//   DASHBOARD_URL  the dashboard, e.g. http://127.0.0.1:8680/ (required)
//   DEAD_CALL_ID   a call that is dead now and whose target is healthy now (required)
//   SUBSCRIPTION   that call's subscription (required)
//   WORKFLOW_ID    if set, a dead workflow with at least 2 journal entries, whose failing
//                  step works now: the test checks its journal view and restarts it from
//                  entry #1
//   WAITING_ID     if set, a workflow waiting for the signal `go`: the test sends it the
//                  payload "from the dashboard" with the call page's form
//   ADMIN_TOKEN    if set, the dashboard must ask for it, and the test types it in
//   SCREENSHOT_DIR if set, dashboard-{overview,dead,call}.png are saved there
//   CHROMIUM       the browser binary (default /usr/bin/chromium)
//
// Exits 0 after printing "dashboard test passed: ...", else prints why and exits 1.
import { mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const STEP_TIMEOUT = 15_000;
const WATCHDOG = 120_000;
const env = process.env;
const started = Date.now();

function need(name) {
  if (!env[name]) {
    console.error(`dashboard test failed: environment variable ${name} is not set`);
    process.exit(1);
  }
  return env[name];
}
const url = need('DASHBOARD_URL');
const deadId = need('DEAD_CALL_ID');
const sub = need('SUBSCRIPTION');
const workflowId = env.WORKFLOW_ID || '';
const waitingId = env.WAITING_ID || '';
const token = env.ADMIN_TOKEN || '';
const shots = env.SCREENSHOT_DIR || '';

let browser;
let page;
let current = 'starting';
const consoleErrors = [];

const tid = (id) => `[data-testid="${id}"]`;
const count = (text) => Number(String(text).replace(/[,\s]/g, ''));

// Run one step with a name, so a failure says which.
async function step(name, fn) {
  current = name;
  return fn();
}

// Poll `fn` in the page until it returns a truthy value; fail with `what` after the timeout.
async function until(what, fn, arg) {
  try {
    const handle = await page.waitForFunction(fn, arg, { timeout: STEP_TIMEOUT, polling: 100 });
    return handle.jsonValue();
  } catch (e) {
    const banner = await page.locator(tid('error-banner')).filter({ visible: true }).textContent({ timeout: 500 }).catch(() => null);
    const asks = await page.locator(tid('token-form')).isVisible().catch(() => false);
    throw new Error(`${what} (not within ${STEP_TIMEOUT / 1000} s${banner ? `; the page shows "${banner.trim()}"` : ''}`
      + `${asks ? '; the page asks for an admin token' + (token ? ' (refused?)' : ' (set ADMIN_TOKEN)') : ''})`);
  }
}

async function shot(name) {
  if (!shots) return;
  mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: join(shots, name) });
}

async function run() {
  // A plain launch gets a fresh temporary profile, removed when the browser closes.
  browser = await chromium.launch({
    executablePath: env.CHROMIUM || '/usr/bin/chromium',
    timeout: STEP_TIMEOUT,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  }).catch((e) => {
    throw new Error(`cannot start Chromium (${env.CHROMIUM || '/usr/bin/chromium'}): ${e.message.split('\n')[0]}`);
  });
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 }, deviceScaleFactor: 1 });
  context.setDefaultTimeout(STEP_TIMEOUT);
  page = await context.newPage();
  page.on('pageerror', (e) => consoleErrors.push(e.message));
  page.on('console', (m) => {
    // Loading without the token is expected to be refused (401) before the token form.
    if (m.type() === 'error' && !(token && m.text().includes('status of 401'))) consoleErrors.push(`${m.text()} (${m.location().url || 'page'})`);
  });
  page.on('dialog', (d) => d.accept());

  await step('open the overview', async () => {
    const res = await page.goto(url, { timeout: STEP_TIMEOUT });
    if (!res || !res.ok()) throw new Error(`GET ${url} answered ${res ? res.status() : 'nothing'}`);
  });

  if (token) {
    await step('enter the admin token', async () => {
      await page.locator(tid('token-form')).waitFor({ state: 'visible' }).catch(() => {
        throw new Error('the token form did not appear although the engine requires a token');
      });
      await page.locator(tid('token-input')).fill(token);
      await page.locator(tid('token-submit')).click();
      await until('the token form did not go away after entering the token',
        (sel) => document.querySelector(sel)?.hidden, tid('token-form'));
    });
  }

  const figures = await step('read the overview counters', () => until(
    `the overview does not show counters: subscription "${sub}" with a dead count of at least 1, and a total of succeeded calls`,
    ([deadSel, okSel]) => {
      const n = (s) => { const t = document.querySelector(s)?.textContent; return t && /^[\d,]+$/.test(t.trim()) ? Number(t.replace(/,/g, '')) : null; };
      const dead = n(deadSel);
      const ok = n(okSel);
      return dead >= 1 && ok !== null && { dead, ok };
    }, [tid(`sub-${sub}-dead`), tid('total-succeeded')]));
  if (token && await page.locator(tid('token-form')).isVisible()) throw new Error('the token form is still shown after a good token');
  await shot('dashboard-overview.png');

  const row = `${tid('dead-row')}[data-id="${deadId}"]`;
  await step('find the call in the dead letters', async () => {
    await page.locator(tid('nav-dead')).click();
    await page.locator(tid('filter-subscription')).selectOption(sub, { timeout: STEP_TIMEOUT });
    await until(`the dead letters page of "${sub}" does not list call ${deadId}`, (sel) => !!document.querySelector(sel), row);
  });
  await shot('dashboard-dead.png');

  const before = await step('open the dead call', async () => {
    await page.locator(`${row} ${tid('call-link')}`).click();
    return until(`the call page of ${deadId} does not show status "dead" with at least one attempt`, ([id, st, rows, want]) => {
      const n = document.querySelectorAll(rows).length;
      return document.querySelector(id)?.textContent === want && document.querySelector(st)?.textContent === 'dead' && n >= 1 && n;
    }, [tid('call-id'), tid('call-status'), tid('attempt-row'), deadId]);
  });

  const after = await step('redrive the call', async () => {
    await page.locator(tid('action-redrive')).click();
    return until(`after Redrive, call ${deadId} did not reach "succeeded" with more than ${before} attempt rows`,
      ([st, rows, n0]) => {
        const n = document.querySelectorAll(rows).length;
        return document.querySelector(st)?.textContent === 'succeeded' && n > n0 && n;
      }, [tid('call-status'), tid('attempt-row'), before]);
  });
  await shot('dashboard-call.png');

  let restarted = '';
  if (workflowId) {
    const entries = await step('open the dead workflow', async () => {
      await page.goto(`${url.replace(/\/$/, '')}/#/calls/${workflowId}`);
      return until(`the call page of workflow ${workflowId} does not show status "dead" and a journal of at least 2 entries`,
        ([st, rows]) => {
          const n = document.querySelectorAll(rows).length;
          return document.querySelector(st)?.textContent === 'dead' && n >= 2 && n;
        }, [tid('call-status'), tid('journal-row')]);
    });
    await shot('dashboard-journal.png');
    await step('restart the workflow from entry #1', async () => {
      await page.locator(`${tid('restart-from')}[data-from="1"]`).click();
      await until(`after "Restart from #1", workflow ${workflowId} did not reach "succeeded"`,
        (st) => document.querySelector(st)?.textContent === 'succeeded', tid('call-status'));
    });
    restarted = `; workflow ${workflowId} (${entries} journal entries) restarted from entry #1 to succeeded`;
  }

  let signalled = '';
  if (waitingId) {
    await step('open the waiting workflow', async () => {
      await page.goto(`${url.replace(/\/$/, '')}/#/calls/${waitingId}`);
      await until(`the call page of ${waitingId} does not offer the signal "go" it waits for`,
        (sel) => document.querySelector(sel)?.value === 'go', tid('signal-name'));
    });
    await step('send the signal from the form', async () => {
      await page.locator(tid('signal-payload')).fill('"from the dashboard"');
      await page.locator(tid('send-signal')).click();
      await until(`after "Send signal", workflow ${waitingId} did not reach "succeeded"`,
        (st) => document.querySelector(st)?.textContent === 'succeeded', tid('call-status'));
    });
    signalled = `; workflow ${waitingId} signalled from the form to succeeded`;
  }

  current = 'check the console';
  if (consoleErrors.length) throw new Error(`the page logged errors: ${consoleErrors.join(' | ')}`);
  return `${figures.dead} dead / ${figures.ok} succeeded on the overview; call ${deadId} redriven from dead to succeeded, `
    + `${before} → ${after} attempts${token ? ', with the token form' : ''}${restarted}${signalled}`;
}

const watchdog = setTimeout(() => {
  console.error(`dashboard test failed: no end after ${WATCHDOG / 1000} s (at step: ${current})`);
  try { browser?.process()?.kill('SIGKILL'); } catch { /* gone */ }
  process.exit(1);
}, WATCHDOG);

let code = 0;
try {
  const what = await run();
  console.log(`dashboard test passed: ${what} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
} catch (e) {
  code = 1;
  console.error(`dashboard test failed at step "${current}": ${e.message}`);
  if (page) {
    const path = join(shots || tmpdir(), 'dashboard-failure.png');
    try {
      mkdirSync(shots || tmpdir(), { recursive: true });
      await page.screenshot({ path, timeout: 5000 });
      console.error(`screenshot of the failure: ${path}`);
    } catch { /* the page may be gone */ }
    console.error(`page: ${page.url()}`);
  }
} finally {
  await browser?.close().catch(() => {});
  clearTimeout(watchdog);
}
process.exit(code);
