// The operator console in Debian's chromium, driven by playwright-core (no bundled browser).
// Started by the Rust test `console::operators_work_from_the_console_in_a_browser`, which sets up
// the application, a dead-lettered payment and a reconciliation, passes them in the environment,
// and checks afterwards from the inside what this script did from the outside. Each check throws
// on failure; the last line printed is "ALL CONSOLE CHECKS PASSED". Screenshots of each page go to
// SCREENSHOT_DIR (docs/console/, shown in README).

import { chromium } from 'playwright-core';

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const URL = env('CONSOLE_URL');
const SHORT_URL = env('CONSOLE_SHORT_URL');
const PAYMENT = env('PAYMENT_ID');
const DAY = env('RECON_DATE');
const SHOTS = env('SCREENSHOT_DIR');

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  console.log(`ok: ${what}`);
}

async function shot(page, name) {
  await page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });
}

async function signIn(page, base, user, password) {
  await page.goto(`${base}/signin`);
  await page.fill('input[name=user]', user);
  await page.fill('input[name=password]', password);
  const [resp] = await Promise.all([
    page.waitForNavigation(),
    page.click('button[type=submit]'),
  ]);
  return resp;
}

async function signOut(page) {
  await Promise.all([page.waitForNavigation(), page.click('header form button')]);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();

  // A wrong password is refused.
  const refused = await signIn(page, URL, 'viewer', 'not-the-password');
  check(refused.status() === 401, `a wrong password gets 401 (got ${refused.status()})`);
  check((await page.content()).includes('NATS refused these credentials.'), 'and says why');
  await shot(page, 'sign-in-refused');
  // So is a creds file that is not one (and nothing of it is echoed back).
  await page.goto(`${URL}/signin`);
  await page.click('summary');
  await page.fill('textarea[name=creds]', 'not a creds file');
  const [badCreds] = await Promise.all([page.waitForNavigation(), page.click('main button[type=submit]')]);
  check(badCreds.status() === 401, `unusable creds get 401 (got ${badCreds.status()})`);
  check((await page.content()).includes('Unusable creds'), 'and says why');

  // Without a session every page is the sign-in page.
  const anon = await page.goto(`${URL}/dead-letters`);
  check(anon.status() === 401, 'no session: 401');
  check(anon.headers()['content-security-policy']?.includes("default-src 'none'"), 'CSP set');
  check(anon.headers()['x-frame-options'] === 'DENY', 'no framing');
  check(anon.headers()['cache-control'] === 'no-store', 'no-store');

  // The viewer: overview, find the payment by id, its timeline, the dead letter, no action.
  await signIn(page, URL, 'viewer', env('VIEWER_PASSWORD'));
  check((await page.textContent('h1')) === 'Overview', 'viewer sees the overview');
  check((await page.content()).includes('read-only'), 'marked read-only');
  await shot(page, 'overview');
  await page.goto(`${URL}/payments`);
  await page.fill('input[name=q]', PAYMENT);
  await Promise.all([page.waitForNavigation(), page.click('main form button[type=submit]')]);
  check(page.url().endsWith(`/payments/${PAYMENT}`), 'finding by id opens the timeline');
  let body = await page.textContent('main');
  check(body.includes('request') && body.includes('PAYMENTS seq'), 'timeline shows the request');
  check(body.includes('psp_attempt') && body.includes('succeeded in'), 'and the PSP attempt with its latency');
  check(body.includes('dead_letter') && body.includes('dead-lettered by wallet'), 'and the dead letter');
  check(body.includes('ledger applied'), 'and the ledger applying the event');
  await shot(page, 'timeline-dead-lettered');
  // A payment nobody sent: a page that says so.
  const missing = await page.goto(`${URL}/payments/00000000-0000-4000-8000-000000000000`);
  check(missing.status() === 404, `a missing payment gets 404 (got ${missing.status()})`);
  check((await page.textContent('main')).includes('not found'), 'and says so');
  await shot(page, 'payment-not-found');
  const noPage = await page.goto(`${URL}/no-such-page`);
  check(noPage.status() === 404, `an unknown page gets 404 (got ${noPage.status()})`);
  await page.goto(`${URL}/payments/${PAYMENT}`);
  await Promise.all([page.waitForNavigation(), page.click('a:has-text("open dead letter")')]);
  body = await page.textContent('main');
  check(body.includes('injected fault'), 'the dead letter shows its reason');
  check((await page.locator('button:has-text("Redrive")').count()) === 0, 'the viewer is offered no redrive');
  check(body.includes('Read-only'), 'and is told why');
  const deadLetterUrl = page.url();
  const id = deadLetterUrl.split('/').pop();
  // Forcing it anyway: the console asks NATS as the viewer, and NATS refuses.
  const csrf = await page.getAttribute('header input[name=csrf]', 'value');
  const forced = await page.request.post(`${URL}/dead-letters/action`, {
    form: { csrf, action: 'redrive', ids: id, confirm: 'yes' },
  });
  check(forced.status() === 403, `a forced redrive by the viewer is refused (${forced.status()})`);
  check((await forced.text()).includes('refused'), 'by the NATS server');
  // A form without the session's token is refused before anything is asked.
  const noToken = await page.request.post(`${URL}/dead-letters/action`, {
    form: { action: 'purge', ids: id, confirm: 'yes' },
  });
  check(noToken.status() === 403, 'a form without the CSRF token is refused');
  await signOut(page);

  // The operator redrives it, with confirmation.
  await signIn(page, URL, 'operator', env('OPERATOR_PASSWORD'));
  await page.goto(`${URL}/dead-letters?consumer=wallet`);
  check((await page.textContent('main')).includes('injected fault'), 'operator lists it filtered by consumer');
  await shot(page, 'dead-letters');
  await page.goto(deadLetterUrl);
  await shot(page, 'dead-letter');
  await Promise.all([page.waitForNavigation(), page.click('button:has-text("Redrive")')]);
  check((await page.textContent('h1')) === 'Confirm: Redrive', 'redrive asks for confirmation');
  await shot(page, 'redrive-confirm');
  await Promise.all([page.waitForNavigation(), page.click('button:has-text("Yes, redrive 1")')]);
  check((await page.textContent('main')).includes('redriven 1 dead letter(s) as operator'), 'redriven');

  // The payment completes: the wallet applies the event.
  let done = false;
  for (let i = 0; i < 60 && !done; i++) {
    await page.goto(`${URL}/payments/${PAYMENT}`);
    body = await page.textContent('main');
    done = body.includes('wallet applied succeeded');
    if (!done) await page.waitForTimeout(500);
  }
  check(done, 'after the redrive the wallet applied the event');
  check(body.includes('redriven by operator'), 'the timeline shows who redrove it');
  await shot(page, 'timeline');
  await page.goto(`${URL}/audit`);
  body = await page.textContent('main');
  check(body.includes('dlq.redrive') && body.includes('operator'), 'the audit trail names the operator');
  await shot(page, 'audit');

  // Reconciliation: runs by day, the manual-review row, resolved with a note.
  await page.goto(`${URL}/recon`);
  check((await page.textContent('main')).includes(DAY), 'the run is listed by day');
  await shot(page, 'recon-runs');
  await page.goto(`${URL}/recon/${DAY}`);
  check((await page.textContent('main')).includes('unknown_payment'), 'the manual-review row is shown');
  await page.fill('input[name=note]', 'unknown to us: the PSP settled a charge of another platform');
  await Promise.all([page.waitForNavigation(), page.click('button:has-text("Resolve")')]);
  body = await page.textContent('main');
  check(body.includes('resolved by operator'), 'the row shows who resolved it');
  await shot(page, 'recon');
  const csv = await page.request.get(`${URL}/recon/${DAY}/csv`);
  check(csv.status() === 200 && (await csv.text()).includes('unknown_payment'), 'the CSV downloads');
  await signOut(page);

  // A forged session cookie is refused.
  await context.addCookies([{ name: 'paystream_console', value: 'f'.repeat(64), url: URL }]);
  const forgedSession = await page.goto(`${URL}/`);
  check(forgedSession.status() === 401, 'a forged session is refused');

  // An expired session is refused (this console's sessions end after 2 s without a request).
  const short = await browser.newContext();
  const p2 = await short.newPage();
  await signIn(p2, SHORT_URL, 'viewer', env('VIEWER_PASSWORD'));
  check((await p2.textContent('h1')) === 'Overview', 'signed in to the short-lived console');
  await p2.waitForTimeout(3000);
  const expired = await p2.goto(`${SHORT_URL}/audit`);
  check(expired.status() === 401, 'an expired session gets 401');
  check((await p2.content()).includes('Your session has expired'), 'and says so');
  await shot(p2, 'session-expired');
  console.log('ALL CONSOLE CHECKS PASSED');
} finally {
  await browser.close();
}
