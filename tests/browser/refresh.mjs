// The dashboard outliving its access token: with admin issuing 3-second tokens
// (tests/e2e/ui.rs, suite ui_short_ttl), the page refreshes the token once on a 401 and
// carries on; a refresh that fails (its session revoked) sends the member back to sign-in
// with the reason in words. Same env as dashboard.mjs.

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { openPage, run, signInPage, stackEnv, withChromium } from './browser.mjs';

const { ADMIN, EMAIL, PASSWORD, BUSINESS, SHOTS } = stackEnv();
const TTL_MS = Number(process.env.KEYGATE_UI_TOKEN_TTL_SECS || '3') * 1000;

async function main() {
  mkdirSync(SHOTS, { recursive: true });
  await withChromium(async (context) => {
    const page = await openPage(context);
    const refreshes = [];
    page.on('request', (r) => { if (r.url().endsWith('/auth/refresh')) refreshes.push(r.url()); });
    await signInPage(page, { admin: ADMIN, email: EMAIL, password: PASSWORD, business: BUSINESS });
    const sid = await page.locator('#sessions-body tr.current').getAttribute('data-session-id');

    // The access token expires; the next call refreshes it and goes on in the same session.
    await page.waitForTimeout(TTL_MS + 1500);
    await page.click('#sessions-refresh');
    await page.locator('#sessions-body tr.current').waitFor();
    assert.equal(refreshes.length, 1, 'one refresh after the token expired');
    assert.equal(await page.locator('#app-view').isVisible(), true, 'still signed in');
    assert.equal(await page.locator('#error').isVisible(), false, 'no error');
    assert.equal(await page.locator('#sessions-body tr.current').getAttribute('data-session-id'), sid, 'the same session');
    await page.fill('#create-name', 'after refresh');
    await page.click('#create-button');
    await page.locator('#secret-dialog').waitFor();
    await page.click('#secret-done');
    await page.locator('#keys-body tr', { hasText: 'after refresh' }).waitFor();
    const path = join(SHOTS, '20-after-token-refresh.png');
    await page.screenshot({ path, fullPage: true });
    console.log(`screenshot: ${path}`);

    // The session is revoked elsewhere: the refresh fails and the page asks to sign in again.
    const other = await fetch(`${ADMIN}/auth/signin`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: EMAIL, password: PASSWORD }) });
    const token = (await other.json()).accessToken;
    const revoked = await fetch(`${ADMIN}/v1/sessions/${sid}`, { method: 'DELETE', headers: { authorization: `Bearer ${token}` } });
    assert.equal(revoked.status, 200);
    await page.click('#sessions-refresh');
    await page.locator('#signin-view').waitFor();
    assert.equal(await page.locator('#error-text').textContent(), 'Your session has ended. Please sign in again.');
    const path2 = join(SHOTS, '21-session-ended-sign-in-again.png');
    await page.screenshot({ path: path2, fullPage: true });
    console.log(`screenshot: ${path2}`);
    console.log('[ui] token refresh checks passed');
  });
}

run('refresh', main);
