// The dashboard's "Identity providers" card (admin/ui/issuers.js): a member trusts their
// own OIDC provider for the selected business, sees its pinned key ids, gets a refusal in
// words for a URL admin will not fetch, and removes it. The provider is this script's own:
// a node HTTP server on loopback serving OIDC discovery and a JWKS with an RSA key made
// here. Same env as dashboard.mjs (set by tests/e2e/ui.rs).

import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { openPage, run, signInPage, stackEnv, withChromium } from './browser.mjs';

const { ADMIN, EMAIL, PASSWORD, BUSINESS, SHOTS } = stackEnv();

/** A provider on a free loopback port: discovery + JWKS with one RS256 key (kid `ui-rsa-1`). */
async function provider() {
  const { publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = { ...publicKey.export({ format: 'jwk' }), kid: 'ui-rsa-1', use: 'sig', alg: 'RS256' };
  let issuer = '';
  const server = createServer((req, res) => {
    const body = req.url === '/.well-known/openid-configuration'
      ? { issuer, jwks_uri: `${issuer}/jwks` }
      : req.url === '/jwks' ? { keys: [jwk] } : null;
    res.writeHead(body ? 200 : 404, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body || {}));
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  issuer = `http://127.0.0.1:${server.address().port}`;
  return { issuer, server };
}

async function shot(page, name) {
  const path = join(SHOTS, name);
  await page.screenshot({ path, fullPage: true });
  console.log(`screenshot: ${path}`);
}

async function main() {
  mkdirSync(SHOTS, { recursive: true });
  const idp = await provider();
  try {
    await withChromium(async (context) => {
      const page = await openPage(context);
      await signInPage(page, { admin: ADMIN, email: EMAIL, password: PASSWORD, business: BUSINESS });
      await page.locator('#issuers-empty').waitFor();
      assert.equal(await page.locator('#issuers-body tr').count(), 0, 'no provider yet');

      // A URL admin does not fetch (https in this build): refused, the reason in words.
      await page.fill('#issuer-url', 'https://login.example.test');
      await page.fill('#issuer-audiences', 'orders-api');
      await page.click('#issuer-add');
      await page.locator('#error').waitFor();
      const refusal = await page.locator('#error-text').textContent();
      assert.match(refusal, /https/, refusal);
      await shot(page, '30-issuer-refused-in-words.png');

      // The loopback provider: discovery, its key pinned, listed by kid.
      await page.fill('#issuer-url', idp.issuer);
      await page.fill('#issuer-audiences', 'orders-api, <img/src=x/onerror=alert(1)>');
      await page.fill('#issuer-claim', 'org_ids');
      await page.check('#issuer-form input[value=ES256]');
      await page.click('#issuer-add');
      const row = page.locator('#issuers-body tr', { hasText: idp.issuer });
      await row.waitFor();
      assert.equal(await page.locator('#error').isVisible(), false, 'no error');
      assert.match(await page.locator('#notice').textContent(), /1 key\(s\) pinned/);
      assert.match(await row.locator('.issuer-keys').textContent(), /ui-rsa-1 \(RS256\)/);
      assert.match(await row.textContent(), /discovery/);
      assert.match(await row.textContent(), /RS256, ES256|ES256, RS256/);
      // An API string is text, never markup.
      assert.match(await row.textContent(), /<img\/src=x\/onerror=alert\(1\)>/);
      assert.equal(await page.locator('#issuers-body img').count(), 0, 'no element made from API text');
      await shot(page, '31-issuer-trusted-keys-pinned.png');

      // The API agrees: one issuer, its key pinned.
      const listed = await page.evaluate(async ([admin, business]) => {
        const r = await fetch(`${admin}/v1/businesses/${business}/issuers`);
        return r.status;
      }, [ADMIN, BUSINESS]);
      assert.equal(listed, 401, 'the list needs a bearer: the page holds it in memory only');

      // Remove: the first click arms the button, the second removes.
      await row.locator('button[data-action=remove-issuer]').click();
      assert.equal(await row.locator('button[data-action=remove-issuer]').textContent(), 'Confirm remove');
      await row.locator('button[data-action=remove-issuer]').click();
      await page.locator('#issuers-empty').waitFor({ state: 'visible' });
      assert.equal(await page.locator('#issuers-body tr').count(), 0, 'removed');
      await shot(page, '32-issuer-removed.png');
      console.log('[ui] identity provider checks passed');
    });
  } finally {
    idp.server.close();
  }
}

run('issuers', main);
