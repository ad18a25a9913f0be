// The dashboard's "Limits & IPs" dialog and "Business rate limits" card in Chromium,
// against the real stack tests/e2e/ui.rs started: a key restricted to other addresses is
// refused by Envoy (403 ip_not_allowed), widened to the loopback it passes, its own limit
// is enforced, bad input is shown in words, and the business's limits are saved.
// Screenshots: $KEYGATE_UI_SCREENSHOTS/policy-NN-step.png, each path printed.

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { eventually, keyOnly, openPage, run, screenshots, signInPage, stackEnv, withChromium } from './browser.mjs';

const { ADMIN, ENVOY, EMAIL, PASSWORD, BUSINESS, SHOTS } = stackEnv();

const throughEnvoy = (rawKey) => keyOnly(ENVOY, rawKey);

async function main() {
  mkdirSync(SHOTS, { recursive: true });
  await withChromium(async (context) => {
    const page = await openPage(context);
    const pageErrors = [];
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    const shot = screenshots(page, SHOTS, 'policy-');

    await signInPage(page, { admin: ADMIN, email: EMAIL, password: PASSWORD, business: BUSINESS });
    await page.locator('#sessions-body tr').first().waitFor();

    // A key of our own, its raw key from the once-only dialog.
    await page.fill('#create-name', 'Restricted');
    await page.selectOption('#create-kind', 'sk');
    await page.click('#create-button');
    await page.locator('#secret-dialog').waitFor();
    const raw = (await page.locator('#secret-value').textContent()).trim();
    await page.click('#secret-done');
    const row = page.locator('#keys-body tr', { hasText: 'Restricted' });
    await row.waitFor();
    await eventually('the new key passes Envoy', async () => (await throughEnvoy(raw))[0] === 200);

    // Restrict it to 10.0.0.0/8 with its own limit of 3 a minute.
    await row.locator('button[data-action="policy"]').click();
    await page.locator('#policy-dialog').waitFor();
    await page.fill('#policy-ips', '10.0.0.0/8\n2001:db8::/32');
    await page.fill('#policy-limits', '3/m');
    await shot('dialog');
    await page.click('#policy-save');
    await page.locator('#policy-dialog').waitFor({ state: 'hidden' });
    await page.locator('#notice').filter({ hasText: 'within seconds' }).waitFor();
    const summary = row.locator('.policy-summary');
    await summary.filter({ hasText: 'only from 2 address ranges' }).waitFor();
    assert.match(await summary.textContent(), /limit 3\/m/);
    await shot('restricted');
    const refusedAfter = Date.now();
    await eventually('Envoy refuses the key from 127.0.0.1', async () => {
      const [status, code] = await throughEnvoy(raw);
      return status === 403 && code === 'ip_not_allowed';
    });
    console.log(`ip_not_allowed at Envoy ${Date.now() - refusedAfter} ms after the save`);

    // A range with host bits set: refused by admin, the reason shown in the dialog.
    await row.locator('button[data-action="policy"]').click();
    assert.equal(await page.inputValue('#policy-ips'), '10.0.0.0/8\n2001:db8::/32', 'the dialog shows the saved list');
    await page.fill('#policy-ips', '127.0.0.1/8');
    await page.click('#policy-save');
    await page.locator('#policy-error').waitFor();
    assert.match(await page.locator('#policy-error').textContent(), /127\.0\.0\.0\/8/);
    await shot('bad-range');

    // Widened to the loopback: it passes, at most 3 a minute.
    await page.fill('#policy-ips', '127.0.0.0/8');
    await page.click('#policy-save');
    await page.locator('#policy-dialog').waitFor({ state: 'hidden' });
    await eventually('Envoy lets the key in from 127.0.0.1', async () => (await throughEnvoy(raw))[0] === 200);
    let passed = 1;
    let last = null;
    for (let i = 0; i < 5; i += 1) {
      last = await throughEnvoy(raw);
      if (last[0] === 200) passed += 1;
    }
    assert.ok(passed <= 3, `at most the key's 3 a minute passed, got ${passed}`);
    assert.deepEqual(last, [429, 'rate_limited']);

    // The business's limits: saved, shown again after a reload of the values; bad input in words.
    await page.fill('#limits-per-key', '50/m');
    await page.fill('#limits-shared', '7/s, 1000/h');
    await page.click('#limits-save');
    await page.locator('#notice').filter({ hasText: 'Business limits saved' }).waitFor();
    const saved = await (await fetch(`${ADMIN}/v1/businesses/${BUSINESS}/limits`, {
      headers: { authorization: `Bearer ${await memberToken()}` },
    })).json();
    assert.deepEqual([saved.per_key, saved.shared], [['50/m'], ['7/s', '1000/h']]);
    await shot('business-limits');
    await page.fill('#limits-shared', '5/week');
    await page.click('#limits-save');
    await page.locator('#error').waitFor();
    assert.match(await page.locator('#error-text').textContent(), /5\/week/);
    await shot('business-limits-error');
    assert.deepEqual(pageErrors, [], 'no script errors in the page');
  });
}

async function memberToken() {
  const r = await fetch(`${ADMIN}/auth/signin`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ email: EMAIL, password: PASSWORD }),
  });
  return (await r.json()).accessToken;
}

run('policy', main);
