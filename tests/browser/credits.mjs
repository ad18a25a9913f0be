// The dashboard's "Credits" dialog in Chromium, against the real stack tests/e2e/ui.rs
// started: a key given 3 credits in the page gets exactly 3 requests through Envoy, then
// 429 quota_exhausted; the row and the dialog show what is left as the gateways report
// it; adding 2 lets 2 more through; bad input is shown in words; "Make unlimited" lifts it.
// Screenshots: $KEYGATE_UI_SCREENSHOTS/credits-NN-step.png, each path printed.

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
    const shot = screenshots(page, SHOTS, 'credits-');

    await signInPage(page, { admin: ADMIN, email: EMAIL, password: PASSWORD, business: BUSINESS });

    await page.fill('#create-name', 'Metered');
    await page.selectOption('#create-kind', 'sk');
    await page.click('#create-button');
    await page.locator('#secret-dialog').waitFor();
    const raw = (await page.locator('#secret-value').textContent()).trim();
    await page.click('#secret-done');
    const row = page.locator('#keys-body tr', { hasText: 'Metered' });
    await row.waitFor();
    assert.equal(await row.locator('.credits-summary').count(), 0, 'a key without credits shows none');

    // Bad input is shown in words inside the dialog.
    await row.locator('button[data-action="credits"]').click();
    await page.locator('#credits-dialog').waitFor();
    await page.locator('#credits-now').filter({ hasText: 'unlimited' }).waitFor();
    await page.fill('#credits-remaining', 'three');
    await page.click('#credits-set');
    await page.locator('#credits-error').filter({ hasText: 'whole number' }).waitFor();
    await shot('bad-input');

    // 3 credits.
    await page.fill('#credits-remaining', '3');
    await page.click('#credits-set');
    await page.locator('#credits-now').filter({ hasText: '3 of 3 credits left' }).waitFor();
    await shot('set');
    await page.click('#credits-cancel');
    await row.locator('.credits-summary').filter({ hasText: '3 of 3 credits left' }).waitFor();

    // The first request may be held until the key's credits reach Envoy; then exactly 3 pass.
    const statuses = [];
    const since = Date.now();
    await eventually('the key with credits reaches Envoy', async () => {
      const [status, code] = await throughEnvoy(raw);
      statuses.push(status === 200 ? 200 : code);
      return statuses.filter((s) => s === 200).length >= 3 || code === 'quota_exhausted';
    });
    console.log(`3 credits set ${Date.now() - since} ms ago: ${JSON.stringify(statuses)}`);
    assert.deepEqual(await throughEnvoy(raw), [429, 'quota_exhausted']);
    assert.equal(statuses.filter((s) => s === 200).length, 3, `exactly 3 passed: ${JSON.stringify(statuses)}`);

    // The page shows what the gateways reported.
    await eventually('the page shows the spent credits', async () => {
      await page.click('#tab-live').catch(() => {});
      await row.locator('button[data-action="credits"]').click();
      await page.locator('#credits-dialog').waitFor();
      const ok = await page.locator('#credits-now').filter({ hasText: '0 of 3 credits left' }).count();
      if (!ok) await page.click('#credits-cancel');
      return ok > 0;
    }, 15000, 500);
    assert.match(await page.locator('#credits-reconciled').textContent(), /last reported/);
    await shot('spent');

    // Add 2: two more pass.
    await page.fill('#credits-amount', '2');
    await page.click('#credits-add');
    await page.locator('#credits-now').filter({ hasText: '2 of 5 credits left' }).waitFor();
    await shot('added');
    let more = 0;
    await eventually('the added credits reach Envoy', async () => {
      if ((await throughEnvoy(raw))[0] === 200) more += 1;
      return more >= 2;
    });
    assert.deepEqual(await throughEnvoy(raw), [429, 'quota_exhausted']);

    // Unlimited again.
    await page.click('#credits-unlimited');
    await page.locator('#credits-now').filter({ hasText: 'unlimited' }).waitFor();
    await page.click('#credits-cancel');
    await eventually('the unlimited key passes Envoy', async () => (await throughEnvoy(raw))[0] === 200);
    await shot('unlimited');
    assert.deepEqual(pageErrors, [], 'no script errors in the page');
  });
}

run('credits', main);
