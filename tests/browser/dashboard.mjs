// The dashboard's browser test: Debian's Chromium driven by playwright-core against the
// real stack that tests/e2e/ui.rs started (admin serving /ui/, Envoy with the filter).
// Signs in, picks the business, creates a key and checks it is shown once, uses it
// through Envoy, waits for the filter's usage report to move `last used` and the chart,
// rotates, deactivates, works in test mode, revokes a session, and provokes API errors.
// Screenshots: $KEYGATE_UI_SCREENSHOTS/NN-step.png, each path printed as it is written.
//
// Env: KEYGATE_ADMIN_URL, KEYGATE_ENVOY_URL, KEYGATE_UI_EMAIL, KEYGATE_UI_PASSWORD,
// KEYGATE_UI_BUSINESS, KEYGATE_UI_SCREENSHOTS, KEYGATE_CHROMIUM (default /usr/bin/chromium).

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { openPage, run, stackEnv, withChromium } from './browser.mjs';

const { ADMIN, ENVOY, EMAIL, PASSWORD, BUSINESS, SHOTS } = stackEnv();
const XSS_NAME = '<img src=x onerror="window.__pwned=1">Billing';

const started = Date.now();
function log(message) {
  console.log(`[ui ${((Date.now() - started) / 1000).toFixed(1)}s] ${message}`);
}

async function eventually(what, probe, limitMs = 20000, everyMs = 250) {
  const deadline = Date.now() + limitMs;
  let last;
  for (;;) {
    last = await probe();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${limitMs} ms`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

// ----- HTTP, outside the browser -----

async function json(method, url, body, headers = {}) {
  const init = { method, headers: { ...headers } };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url, init);
  const text = await response.text();
  let data = null;
  try { data = JSON.parse(text); } catch { data = text; }
  return { status: response.status, headers: response.headers, body: data };
}

/** A request through Envoy with the three credentials the gateway wants on /orders: a
 *  Bearer token (by default from `/auth/login` with the key itself), the key, the business. */
async function throughEnvoy(rawKey, bearer = null) {
  let token = bearer;
  if (!token) {
    const login = await json('POST', `${ADMIN}/auth/login`, { api_key: rawKey, session_id: 'ui-browser-test' });
    if (login.status !== 200) return `login ${login.status}`;
    token = login.body.access_token;
  }
  const r = await fetch(`${ENVOY}/orders`, {
    headers: { authorization: `Bearer ${token}`, SECRET_KEY: rawKey, businessId: BUSINESS },
  });
  await r.arrayBuffer();
  return r.status;
}

function sidOf(jwt) {
  return JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString()).sid;
}

// ----- the headers of /ui -----

async function checkHeaders() {
  const page = await fetch(`${ADMIN}/ui/`);
  const csp = page.headers.get('content-security-policy') || '';
  for (const directive of ["default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'none'"]) {
    assert.ok(csp.includes(directive), `CSP lacks ${directive}: ${csp}`);
  }
  assert.ok(!csp.includes('unsafe-inline') && !csp.includes('unsafe-eval'), csp);
  assert.equal(page.headers.get('x-content-type-options'), 'nosniff');
  assert.equal(page.headers.get('referrer-policy'), 'no-referrer');
  assert.match(page.headers.get('content-type'), /^text\/html/);
  const html = await page.text();
  assert.ok(!/<script(?![^>]*\bsrc=)[^>]*>/i.test(html), 'no inline script in the page');
  assert.ok(!/\sstyle=/i.test(html) && !/<style/i.test(html), 'no inline style in the page');
  assert.ok(!/\son[a-z]+=/i.test(html), 'no inline event handler in the page');
  for (const [file, type] of [['app.js', /^text\/javascript/], ['api.js', /^text\/javascript/], ['app.css', /^text\/css/]]) {
    const r = await fetch(`${ADMIN}/ui/${file}`);
    assert.equal(r.status, 200, file);
    assert.match(r.headers.get('content-type'), type, file);
    assert.ok(r.headers.get('content-security-policy'), `${file} has a CSP`);
    await r.arrayBuffer();
  }
  const bare = await fetch(`${ADMIN}/ui`, { redirect: 'manual' });
  assert.equal(bare.status, 301);
  assert.equal(bare.headers.get('location'), '/ui/');
  log(`CSP: ${csp}`);
}

// ----- the browser -----

async function main() {
  mkdirSync(SHOTS, { recursive: true });
  await checkHeaders();

  // A second sign-in session of the same member, to revoke from the page later.
  const other = await json('POST', `${ADMIN}/auth/signin`, { email: EMAIL, password: PASSWORD });
  assert.equal(other.status, 200, JSON.stringify(other.body));
  const otherToken = other.body.accessToken;
  const otherSid = sidOf(otherToken);
  // A member token that stays valid, so a refusal at Envoy is the key's alone.
  const member = await json('POST', `${ADMIN}/auth/signin`, { email: EMAIL, password: PASSWORD });
  assert.equal(member.status, 200, JSON.stringify(member.body));
  const memberToken = member.body.accessToken;

  const secrets = []; // raw keys seen: none may reach the console or the URL
  const consoleLines = [];
  const pageErrors = [];
  await withChromium(async (context) => {
    await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: ADMIN });
    const page = await openPage(context);
    page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    let n = 0;
    const shot = async (step) => {
      n += 1;
      const path = join(SHOTS, `${String(n).padStart(2, '0')}-${step}.png`);
      await page.screenshot({ path, fullPage: true });
      console.log(`screenshot: ${path}`);
    };
    const errorText = () => page.locator('#error-text').textContent();
    // The raw key the secret dialog shows once, noted among the secrets.
    const shownSecret = async () => {
      await page.locator('#secret-dialog').waitFor();
      const secret = (await page.locator('#secret-value').textContent()).trim();
      secrets.push(secret);
      return secret;
    };

    // 1. The sign-in page; a wrong password is an API error shown in words.
    await page.goto(`${ADMIN}/ui/`);
    await page.locator('#signin-view').waitFor();
    await shot('signin');
    await page.fill('#email', EMAIL);
    await page.fill('#password', 'not the password');
    await page.click('#signin-button');
    await page.locator('#error').waitFor();
    assert.equal(await errorText(), 'Invalid email or password');
    await shot('signin-error');

    // 2. Sign in, pick the business.
    const signIn = async () => {
      await page.fill('#email', EMAIL);
      await page.fill('#password', PASSWORD);
      await page.click('#signin-button');
      await page.locator('#app-view').waitFor();
      await page.selectOption('#business', BUSINESS);
      await page.locator('#sessions-body tr').first().waitFor();
    };
    await signIn();
    assert.equal(await page.locator('#error').isVisible(), false, 'no error after signing in');
    assert.equal(await page.locator('#who-email').textContent(), EMAIL);
    await shot('signed-in');

    // 3. Create a live key whose name is markup: it must show as text.
    await page.fill('#create-name', XSS_NAME);
    await page.selectOption('#create-kind', 'sk');
    await page.click('#create-button');
    const raw = await shownSecret();
    assert.match(raw, /^sk_live_[A-Za-z0-9]+/, 'a raw live secret key is shown');
    assert.match(await page.locator('#secret-warning').textContent(), /will not be shown again/);
    await page.click('#secret-copy');
    await page.locator('#secret-copied').filter({ hasText: /Copied|Selected/ }).waitFor();
    const copied = await page.evaluate(() => navigator.clipboard.readText().catch(() => null));
    if (copied !== null) assert.equal(copied, raw, 'the copy button copies the raw key');
    await shot('key-created-shown-once');
    await page.click('#secret-done');
    await page.locator('#secret-dialog').waitFor({ state: 'hidden' });
    assert.ok((await page.locator('#secret-value').textContent()) === '', 'the raw key is dropped when the dialog closes');
    assert.ok(!(await page.content()).includes(raw), 'the raw key is nowhere in the page after closing the dialog');
    const row = page.locator('#keys-body tr', { hasText: 'Billing' });
    await row.waitFor();
    assert.equal(await row.locator('td.name').textContent(), XSS_NAME, 'the name is shown as text');
    assert.equal(await page.locator('#keys-body img').count(), 0, 'no markup from the API is rendered');
    assert.equal(await page.evaluate(() => window.__pwned), undefined, 'no script from the API ran');
    assert.equal(await row.locator('td.last-used').textContent(), 'never');
    const keyId = await row.getAttribute('data-key-id');
    assert.match(keyId, /^key_/);
    // Nothing kept in storage, cookies or the URL.
    assert.deepEqual(await page.evaluate(() => [localStorage.length, sessionStorage.length, document.cookie, location.href]), [0, 0, '', `${ADMIN}/ui/`]);
    assert.equal((await context.cookies()).length, 0, 'no cookies');
    // A reload forgets the token (it lived in memory), ends its session on the server, and
    // the key is gone for good.
    const before = await page.locator('#sessions-body tr.current').getAttribute('data-session-id');
    await page.reload();
    await page.locator('#signin-view').waitFor();
    assert.ok(!(await page.content()).includes(raw), 'the raw key is not shown again after a reload');
    await signIn();
    await row.waitFor();
    assert.ok(!(await page.content()).includes(raw), 'the raw key is not in the signed-in page either');
    await eventually('the session of the page before the reload is ended', async () => {
      await page.click('#sessions-refresh');
      await page.waitForTimeout(200);
      return (await page.locator(`#sessions-body tr[data-session-id="${before}"]`).count()) === 0;
    }, 10000, 300);

    // 4. Use the key through Envoy; the filter's usage report moves `last used` and the chart.
    await eventually('the new key works through Envoy', async () => (await throughEnvoy(raw)) === 200, 15000, 100);
    for (let i = 0; i < 4; i++) assert.equal(await throughEnvoy(raw), 200);
    const sent = Date.now();
    await row.locator('button[data-action="usage"]').click();
    await page.locator('#usage-card').waitFor();
    await eventually('last used and the chart move', async () => {
      await page.click('#usage-refresh');
      await page.waitForTimeout(300);
      const last = await page.locator(`#keys-body tr[data-key-id="${keyId}"] td.last-used`).textContent();
      const total = Number(await page.locator('#usage-total').textContent());
      const bars = await page.locator('#usage-chart svg rect.bar').count();
      return last !== 'never' && total >= 5 && bars >= 1;
    }, 30000, 500);
    log(`usage visible in the page ${Date.now() - sent} ms after the requests`);
    assert.ok(Number(await page.locator('#usage-chart svg').getAttribute('data-total')) >= 5);
    await shot('usage-chart');

    // 5. An expiry in the past is refused in words; a future one is set.
    await row.locator('button[data-action="expiry"]').click();
    await page.fill('#expiry-input', '2020-01-01T00:00');
    await page.click('#expiry-save');
    await page.locator('#expiry-error').waitFor();
    assert.equal(await page.locator('#expiry-error').textContent(), 'expires_at must be in the future');
    assert.equal(await errorText(), 'expires_at must be in the future');
    await shot('api-error-in-words');
    await page.fill('#expiry-input', '2099-12-31T23:30');
    await page.click('#expiry-save');
    await page.locator(`#keys-body tr[data-key-id="${keyId}"] td.expires`, { hasText: '2099-12-31 23:30 UTC' }).waitFor();
    assert.equal(await page.locator('#error').isVisible(), false);
    assert.equal(await throughEnvoy(raw), 200, 'a future expiry keeps the key working');

    // 6. Rotate: a new raw key, shown once; the old one stops at Envoy.
    await row.locator('button[data-action="rotate"]').click();
    await page.locator('#confirm-dialog').waitFor();
    await page.selectOption('#grace', '0');
    await page.click('#confirm-ok');
    const rotated = await shownSecret();
    assert.match(rotated, /^sk_live_/);
    assert.notEqual(rotated, raw);
    await shot('rotated-new-key-shown-once');
    await page.click('#secret-done');
    await page.locator('#secret-dialog').waitFor({ state: 'hidden' });
    assert.ok((await page.locator('#secret-value').textContent()) === '', 'the rotated raw key is dropped when the dialog closes');
    await eventually('the rotated key works at Envoy', async () => (await throughEnvoy(rotated)) === 200, 10000, 100);
    await eventually('the old key is refused at Envoy after rotation', async () => (await throughEnvoy(raw, memberToken)) === 401, 10000, 100);
    assert.equal(await throughEnvoy(raw), 'login 401', 'admin refuses the old key too');

    // 7. Deactivate: the key stops at Envoy; the page says Inactive.
    assert.equal(await throughEnvoy(rotated, memberToken), 200, 'before deactivation the member token + key pass');
    await row.locator('button[data-action="deactivate"]').click();
    await page.locator('#confirm-dialog').waitFor();
    await page.click('#confirm-ok');
    await page.locator(`#keys-body tr[data-key-id="${keyId}"] .state-inactive`).waitFor();
    await eventually('the deactivated key is refused at Envoy', async () => (await throughEnvoy(rotated, memberToken)) === 401, 10000, 100);
    await shot('deactivated');
    // Activate again: it works again (then stays active; nothing else depends on it).
    await row.locator('button[data-action="activate"]').click();
    await page.locator(`#keys-body tr[data-key-id="${keyId}"] .state-active`).waitFor();
    await eventually('the re-activated key works at Envoy', async () => (await throughEnvoy(rotated, memberToken)) === 200, 10000, 100);
    // And clear its expiry.
    await row.locator('button[data-action="expiry"]').click();
    await page.click('#expiry-clear');
    await page.locator(`#keys-body tr[data-key-id="${keyId}"] td.expires`, { hasText: 'never' }).waitFor();

    // 8. Test keys are apart from live keys.
    await page.click('#tab-test');
    assert.equal(await page.locator('#keys-card').getAttribute('data-mode'), 'test');
    assert.equal(await page.locator(`#keys-body tr[data-key-id="${keyId}"]`).count(), 0, 'live keys are not listed under test');
    await page.fill('#create-name', 'CI runner');
    await page.click('#create-button');
    const testKey = await shownSecret();
    assert.match(testKey, /^sk_test_/);
    await page.click('#secret-done');
    await page.locator('#secret-dialog').waitFor({ state: 'hidden' });
    await page.locator('#keys-body tr', { hasText: 'CI runner' }).waitFor();
    assert.equal(await page.locator('#count-test').textContent(), '1');
    await shot('test-mode');
    await page.click('#tab-live');
    await page.locator(`#keys-body tr[data-key-id="${keyId}"]`).waitFor();

    // 9. Sessions: revoke the other one; its token stops working.
    assert.equal((await json('GET', `${ADMIN}/v1/me`, undefined, { authorization: `Bearer ${otherToken}` })).status, 200);
    await page.click('#sessions-refresh');
    const otherRow = page.locator(`#sessions-body tr[data-session-id="${otherSid}"]`);
    await otherRow.waitFor();
    assert.equal(await page.locator('#sessions-body tr.current').count(), 1, 'this browser\'s session is marked');
    await shot('sessions');
    await otherRow.locator('button[data-action="revoke"]').click();
    await page.locator('#confirm-dialog').waitFor();
    await page.click('#confirm-ok');
    await otherRow.waitFor({ state: 'detached' });
    const after = await json('GET', `${ADMIN}/v1/me`, undefined, { authorization: `Bearer ${otherToken}` });
    assert.equal(after.status, 401, 'the revoked session\'s token is refused');
    await shot('session-revoked');

    // Revoking this page's own session signs out.
    await page.locator('#sessions-body tr.current button[data-action="revoke"]').click();
    await page.locator('#confirm-dialog').waitFor();
    await page.click('#confirm-ok');
    await page.locator('#signin-view').waitFor();
    assert.equal(await page.locator('#app-view').isVisible(), false);
    assert.equal(await page.locator('#keys-body tr').count(), 0, 'nothing of the business stays on the page');

    // The whole run: no script error, no CSP violation, no secret in the console.
    assert.deepEqual(pageErrors, [], 'no script errors');
    const violations = consoleLines.filter((l) => /Content Security Policy|Refused to/i.test(l));
    assert.deepEqual(violations, [], 'no CSP violations');
    for (const secret of secrets) {
      assert.ok(!consoleLines.some((l) => l.includes(secret)), 'no raw key in the console');
      assert.ok(!page.url().includes(secret), 'no raw key in the URL');
    }
    log('all dashboard checks passed');
  });
}

run('dashboard', main);
