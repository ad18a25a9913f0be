// What a member sets for the gateways beyond a key itself: a key's address allowlist and
// own rate limits (a dialog per key), and the business's limits (a card). The gateways
// enforce them within seconds of a save. Strings from the API go in with textContent only.

import { api } from './api.js';
import { $, h } from './dom.js';

let hooks = null;
let policyKey = null;

/** `act(button, fn)`, `showError(e)`, `notice(text)`, `reload()` and `keyLabel(key)` from the page. */
export function initPolicy(pageHooks) {
  hooks = pageHooks;
  $('policy-save').addEventListener('click', (e) => savePolicy(e.currentTarget));
  $('policy-cancel').addEventListener('click', () => $('policy-dialog').close());
  $('limits-save').addEventListener('click', (e) => saveBusinessLimits(e.currentTarget));
}

/** "a, b\nc" → ["a", "b", "c"]: entries split on commas, spaces and new lines. */
function entries(text) {
  return text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
}

/** What a key row says under its name about its allowlist and limits (or nothing). */
export function policySummary(key) {
  const parts = [];
  if (key.allowed_ips && key.allowed_ips.length) {
    parts.push(key.allowed_ips.length === 1 ? `only from ${key.allowed_ips[0]}` : `only from ${key.allowed_ips.length} address ranges`);
  }
  if (key.rate_limits) parts.push(`limit ${key.rate_limits.join(', ')}`);
  return parts.length ? h('div', { class: 'small muted policy-summary' }, parts.join(' · ')) : null;
}

export function editPolicy(key) {
  policyKey = key;
  $('policy-title').textContent = `Addresses and limits of ${hooks.keyLabel(key)}`;
  $('policy-ips').value = (key.allowed_ips || []).join('\n');
  $('policy-limits').value = (key.rate_limits || []).join(', ');
  for (const el of document.querySelectorAll('.dialog-error')) el.hidden = true;
  $('policy-dialog').showModal();
}

async function savePolicy(button) {
  const key = policyKey;
  const limits = entries($('policy-limits').value);
  const body = { allowed_ips: entries($('policy-ips').value), rate_limits: limits.length ? limits : null };
  await hooks.act(button, async () => {
    await api.updateKey(key.id, body);
    $('policy-dialog').close();
    hooks.notice(`Saved: the gateways apply the new addresses and limits of ${hooks.keyLabel(key)} within seconds.`);
    await hooks.reload();
  });
}

export async function loadBusinessLimits(business) {
  const limits = await api.businessLimits(business);
  $('limits-per-key').value = (limits.per_key || []).join(', ');
  $('limits-shared').value = (limits.shared || []).join(', ');
  $('limits-card').dataset.business = limits.business;
}

async function saveBusinessLimits(button) {
  const business = $('limits-card').dataset.business;
  const perKey = entries($('limits-per-key').value);
  const shared = entries($('limits-shared').value);
  await hooks.act(button, async () => {
    const saved = await api.setBusinessLimits(business, { per_key: perKey.length ? perKey : null, shared: shared.length ? shared : null });
    $('limits-per-key').value = (saved.per_key || []).join(', ');
    $('limits-shared').value = (saved.shared || []).join(', ');
    hooks.notice('Business limits saved: the gateways apply them within seconds.');
  });
}
