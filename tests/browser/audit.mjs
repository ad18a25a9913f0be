// The dashboard's audit log in Chromium, against the stack tests/e2e/ui.rs started: the
// member signs in and sees their business's changes (the operator's business and key
// creation among them), makes a key and rotates it in the page and sees both entries
// appear with who, when and from where; never a raw key, never the other business; the
// "Older entries" button pages on. Screenshots: $KEYGATE_UI_SCREENSHOTS/3N-audit-*.png.
// Same env as dashboard.mjs.

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { openPage, run, signInPage, stackEnv, withChromium } from './browser.mjs';

const { ADMIN, EMAIL, PASSWORD, BUSINESS, SHOTS } = stackEnv();

async function shot(page, name) {
  const path = join(SHOTS, name);
  await page.screenshot({ path, fullPage: true });
  console.log(`screenshot: ${path}`);
}

async function actions(page) {
  return page.locator('#audit-body tr td:nth-child(4)').allTextContents();
}

async function main() {
  mkdirSync(SHOTS, { recursive: true });
  await withChromium(async (context) => {
    const page = await openPage(context);
    await signInPage(page, { admin: ADMIN, email: EMAIL, password: PASSWORD, business: BUSINESS });
    await page.locator('#audit-body tr').first().waitFor();

    // What the operator did before the member came: the business, the member, a key.
    const before = await actions(page);
    for (const action of ['business.create', 'user.create', 'key.create']) {
      assert.ok(before.includes(action), `${action} in ${before}`);
    }
    assert.equal(await page.locator('#audit-body tr', { hasText: 'operator' }).count(), before.length, 'all by the operator');

    // The member creates a key and rotates it: both show, newest first, as the member.
    await page.click('#tab-live');
    await page.fill('#create-name', 'Audited');
    await page.click('#create-button');
    await page.locator('#secret-dialog').waitFor();
    const raw = await page.locator('#secret-value').textContent();
    await page.click('#secret-done');
    const row = page.locator('#keys-body tr', { hasText: 'Audited' });
    await row.waitFor();
    const keyId = await row.getAttribute('data-key-id');
    await row.locator('button[data-action="rotate"]').click();
    await page.locator('#confirm-dialog').waitFor();
    await page.selectOption('#grace', '3600');
    await page.click('#confirm-ok');
    await page.locator('#secret-dialog').waitFor();
    const rotated = await page.locator('#secret-value').textContent();
    await page.click('#secret-done');
    await page.locator('#audit-body tr', { hasText: 'key.rotate' }).waitFor();

    const after = await actions(page);
    assert.deepEqual(after.slice(0, 2), ['key.rotate', 'key.create'], `${after}`);
    const top = page.locator('#audit-body tr').first();
    const cells = await top.locator('td').allTextContents();
    assert.match(cells[0], /^\d{4}-\d\d-\d\d \d\d:\d\d UTC$/, 'when');
    assert.match(cells[1], /^member usr_/, 'who');
    assert.match(cells[2], /^(127\.0\.0\.1|::1)$/, 'from');
    assert.ok(cells[4].includes(keyId), 'the key');
    assert.ok(cells[5].includes('grace_secs: 3600'), `details: ${cells[5]}`);
    const card = await page.locator('#audit-card').textContent();
    for (const secret of [raw, rotated]) assert.ok(!card.includes(secret), 'no raw key in the audit log');
    await shot(page, '30-audit-log.png');

    // Only this business's entries: every row is of this business (the page asks for it),
    // and the API refuses another business to a member.
    const token = (await (await fetch(`${ADMIN}/auth/signin`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: EMAIL, password: PASSWORD }),
    })).json()).accessToken;
    const mine = await (await fetch(`${ADMIN}/v1/audit?business=${BUSINESS}`, { headers: { authorization: `Bearer ${token}` } })).json();
    assert.ok(mine.entries.every((e) => e.businesses.includes(BUSINESS) || e.actor.kind === 'member'), 'only this business');
    const all = await (await fetch(`${ADMIN}/v1/audit`, { headers: { authorization: `Bearer ${token}` } })).json();
    assert.ok(all.entries.every((e) => e.businesses.includes(BUSINESS) || e.actor.kind === 'member'), 'a member sees their businesses only');

    // Paging: with more entries than a page, "Older entries" appends the rest.
    for (let i = 0; i < 25; i += 1) {
      const r = await fetch(`${ADMIN}/v1/keys/${keyId}/${i % 2 === 0 ? 'deactivate' : 'activate'}`, { method: 'POST', headers: { authorization: `Bearer ${token}` } });
      assert.equal(r.status, 200);
    }
    await page.click('#audit-refresh');
    await page.locator('#audit-more').waitFor();
    const firstPage = await page.locator('#audit-body tr').count();
    assert.equal(firstPage, 25, 'one page');
    await page.click('#audit-more');
    await page.waitForFunction((n) => document.querySelectorAll('#audit-body tr').length > n, firstPage);
    const rows = await page.locator('#audit-body tr').count();
    const ids = await page.locator('#audit-body tr').evaluateAll((trs) => trs.map((tr) => Number(tr.dataset.auditId)));
    assert.deepEqual(ids, [...ids].sort((a, b) => b - a), 'newest first, no repeats');
    assert.equal(new Set(ids).size, rows);
    assert.equal(await page.locator('#audit-more').isVisible(), false, 'no older entries left');
    await shot(page, '31-audit-log-paged.png');
    assert.equal(await page.locator('#error').isVisible(), false, 'no error');
    console.log('[ui] audit log checks passed');
  });
}

run('audit', main);
