// What the browser tests share: their environment, a headless Chromium on a throw-away
// profile, and how a script reports its failure.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

/** The environment variable `name`, which tests/e2e/ui.rs sets. */
export function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (run through tests/e2e/ui.rs)`);
  return value;
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
