// What the browser tests share: their environment, a headless Chromium on a throw-away
// profile, and how a script reports its failure.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';

/** The environment variable `name`, which tests/e2e/ui.rs sets. */
export function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (run through tests/e2e/ui.rs)`);
  return value;
}

// The stack tests/e2e/ui.rs started, as every dashboard script reads it (each variable is
// required: a missing one ends the script with its name).
export function stackEnv() {
  return {
    ADMIN: env('KEYGATE_ADMIN_URL'),
    ENVOY: env('KEYGATE_ENVOY_URL'),
    EMAIL: env('KEYGATE_UI_EMAIL'),
    PASSWORD: env('KEYGATE_UI_PASSWORD'),
    BUSINESS: env('KEYGATE_UI_BUSINESS'),
    SHOTS: resolve(env('KEYGATE_UI_SCREENSHOTS')),
  };
}

const CHROMIUM = process.env.KEYGATE_CHROMIUM || '/usr/bin/chromium';

/** Runs `use(context)` in a headless Chromium on a new profile; closes it and removes the profile after. */
export async function withChromium(use) {
  const profile = mkdtempSync(join(tmpdir(), 'keygate-ui-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 860 },
    timeout: 60000,
  });
  try {
    return await use(context);
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

/** Runs `main`; on failure prints `<name> test FAILED: <stack>` and exits 1. */
export function run(name, main) {
  main().catch((e) => {
    console.error(`${name} test FAILED: ${e && e.stack ? e.stack : e}`);
    process.exit(1);
  });
}

/** Polls `probe` until it returns something truthy (returned), at most `limitMs`. */
export async function eventually(what, probe, limitMs = 15000, everyMs = 100) {
  const deadline = Date.now() + limitMs;
  for (;;) {
    const last = await probe();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${limitMs} ms`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** The context's page (a new one if it has none), waiting at most 15 s for anything. */
export async function openPage(context) {
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(15000);
  return page;
}

/** Opens the dashboard at `admin`, signs in as `email` and picks `business`. */
export async function signInPage(page, { admin, email, password, business }) {
  await page.goto(`${admin}/ui/`);
  await page.fill('#email', email);
  await page.fill('#password', password);
  await page.click('#signin-button');
  await page.locator('#app-view').waitFor();
  await page.selectOption('#business', business);
}

/** A `shot(step)` that saves `<dir>/<prefix>NN-<step>.png` (full page) and prints its path. */
export function screenshots(page, dir, prefix = '') {
  let n = 0;
  return async (step) => {
    n += 1;
    const path = join(dir, `${prefix}${String(n).padStart(2, '0')}-${step}.png`);
    await page.screenshot({ path, fullPage: true });
    console.log(`screenshot: ${path}`);
  };
}

/** `GET /key/items` through Envoy with only the API key: [status, the refusal's code or null]. */
export async function keyOnly(envoy, rawKey) {
  const r = await fetch(`${envoy}/key/items`, { headers: { SECRET_KEY: rawKey } });
  const text = await r.text();
  let code = null;
  try { code = JSON.parse(text).code || null; } catch { /* the upstream's echo */ }
  return [r.status, code];
}
