// The key dashboard: sign in, pick a business, manage its API keys and your sessions.
// Nothing here logs to the console, and no secret ever goes into the URL or storage.

import { api, ApiError, endOnLeave, forget, signIn, signOut, whenSignedOut } from './api.js';
import { loadAudit } from './audit.js';
import { drawUsage } from './chart.js';
import { $, clear, fromLocalInput, h, relative, toLocalInput, when } from './dom.js';
import { initIssuers, loadIssuers } from './issuers.js';
import { editPolicy, initPolicy, loadBusinessLimits, policySummary } from './policy.js';
import { creditsSummary, editCredits, initCredits } from './credits.js';

const state = {
  email: null,
  businesses: [],
  business: null,
  mode: 'live',
  keys: [],
  usageKey: null,
};

// ----- messages -----

function showError(error) {
  const text = error instanceof ApiError || error instanceof Error ? error.message : String(error);
  $('error-text').textContent = text;
  $('error').hidden = false;
  $('notice').hidden = true;
  // A modal dialog hides the banner: say it in the dialog too.
  const inDialog = document.querySelector('dialog[open] .dialog-error');
  if (inDialog) {
    inDialog.textContent = text;
    inDialog.hidden = false;
  }
}

function clearError() {
  $('error').hidden = true;
  $('error-text').textContent = '';
  for (const el of document.querySelectorAll('.dialog-error')) {
    el.hidden = true;
    el.textContent = '';
  }
}

let noticeTimer = null;
function notice(text) {
  clearError();
  $('notice').textContent = text;
  $('notice').hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { $('notice').hidden = true; }, 6000);
}

/** Runs an action with `button` disabled; errors are shown, never swallowed. */
async function act(button, action) {
  if (button) button.disabled = true;
  try {
    await action();
  } catch (e) {
    showError(e);
  } finally {
    if (button) button.disabled = false;
  }
}

// ----- views -----

function showSignin(message) {
  $('app-view').hidden = true;
  $('who').hidden = true;
  $('signin-view').hidden = false;
  $('usage-card').hidden = true;
  clear($('keys-body'));
  clear($('sessions-body'));
  clear($('issuers-body'));
  state.keys = [];
  state.usageKey = null;
  if (message) showError(message);
  $('password').value = '';
  $('email').focus();
}

function showApp() {
  $('signin-view').hidden = true;
  $('app-view').hidden = false;
  $('who').hidden = false;
  $('who-email').textContent = state.email || '';
  const select = $('business');
  clear(select);
  for (const b of state.businesses) select.appendChild(h('option', { value: b.id }, `${b.name} (${b.id})`));
  if (state.business) select.value = state.business;
}

// ----- sign-in -----

$('signin-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const email = $('email').value.trim();
  const password = $('password').value;
  if (!email || !password) {
    showError('Enter your email and password.');
    return;
  }
  act($('signin-button'), async () => {
    await signIn(email, password);
    $('password').value = '';
    const me = await api.me();
    state.email = me.user.email;
    state.businesses = me.businesses;
    if (state.businesses.length === 0) {
      await signOut();
      showSignin('Your account belongs to no business yet; ask your operator to add you to one.');
      return;
    }
    state.business = state.businesses[0].id;
    clearError();
    showApp();
    await Promise.all([loadKeys(), loadSessions(), loadBusinessLimits(state.business), loadIssuers(state.business)]);
  });
});

$('signout').addEventListener('click', () => act($('signout'), async () => {
  await signOut();
  showSignin();
}));

whenSignedOut((message) => showSignin(message));

$('business').addEventListener('change', () => act(null, async () => {
  state.business = $('business').value;
  state.usageKey = null;
  $('usage-card').hidden = true;
  await Promise.all([loadKeys(), loadBusinessLimits(state.business), loadIssuers(state.business)]);
}));

// ----- live / test -----

function setMode(mode) {
  state.mode = mode;
  for (const tab of [$('tab-live'), $('tab-test')]) tab.setAttribute('aria-selected', String(tab.dataset.mode === mode));
  document.body.dataset.mode = mode;
  $('keys-card').dataset.mode = mode;
  $('keys-title').textContent = mode === 'live' ? 'Live keys' : 'Test keys';
  $('mode-hint').textContent = mode === 'live'
    ? 'Live keys reach real data and real money. Keep them on your servers.'
    : 'Test keys only see test data: safe for development and CI.';
  $('create-button').textContent = `Create ${mode} key`;
  const charted = state.keys.find((k) => k.id === state.usageKey);
  if (charted && charted.mode !== mode) {
    state.usageKey = null;
    $('usage-card').hidden = true;
  }
  renderKeys();
}
$('tab-live').addEventListener('click', () => setMode('live'));
$('tab-test').addEventListener('click', () => setMode('test'));

// ----- keys -----

async function loadKeys() {
  if (!state.business) return;
  const answer = await api.keys(state.business);
  state.keys = answer.keys;
  renderKeys();
  if (state.usageKey) await loadUsage(state.usageKey);
  await loadAudit(state.business);
}

function keyState(key) {
  if (!key.active) return ['inactive', 'Inactive'];
  if (key.expires_at && new Date(key.expires_at).getTime() <= Date.now()) return ['expired', 'Expired'];
  return ['active', 'Active'];
}

function renderKeys() {
  const body = $('keys-body');
  clear(body);
  const counts = { live: 0, test: 0 };
  for (const k of state.keys) counts[k.mode] = (counts[k.mode] || 0) + 1;
  $('count-live').textContent = String(counts.live);
  $('count-test').textContent = String(counts.test);
  const shown = state.keys.filter((k) => k.mode === state.mode).sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
  $('keys-empty').hidden = shown.length > 0;
  for (const key of shown) {
    const [cls, label] = keyState(key);
    const lastUsed = relative(key.last_used_at);
    const row = h('tr', { dataset: { keyId: key.id }, class: key.id === state.usageKey ? 'selected' : null },
      h('td', { class: 'name' }, key.name || h('span', { class: 'muted' }, 'unnamed'), policySummary(key), creditsSummary(key)),
      h('td', {}, h('code', { class: 'prefix' }, `${key.prefix}…`)),
      h('td', {}, key.kind),
      h('td', {}, h('span', { class: `badge mode-${key.mode}` }, key.mode)),
      h('td', {}, h('span', { class: `badge state-${cls}` }, label),
        key.previous_key_valid_until ? h('div', { class: 'small muted' }, `old key works until ${when(key.previous_key_valid_until)}`) : null),
      h('td', { title: key.created_at }, when(key.created_at)),
      h('td', { class: 'expires', title: key.expires_at || '' }, when(key.expires_at, 'never')),
      h('td', { class: 'last-used', title: key.last_used_at || '' }, lastUsed || 'never'),
      h('td', { class: 'actions' },
        h('button', { type: 'button', class: 'small secondary', 'data-action': 'usage', onclick: () => act(null, () => loadUsage(key.id)) }, 'Usage'),
        h('button', { type: 'button', class: 'small secondary', 'data-action': 'rotate', onclick: (e) => rotate(key, e.currentTarget) }, 'Rotate'),
        key.active
          ? h('button', { type: 'button', class: 'small danger', 'data-action': 'deactivate', onclick: (e) => setActive(key, false, e.currentTarget) }, 'Deactivate')
          : h('button', { type: 'button', class: 'small secondary', 'data-action': 'activate', onclick: (e) => setActive(key, true, e.currentTarget) }, 'Activate'),
        h('button', { type: 'button', class: 'small secondary', 'data-action': 'expiry', onclick: () => editExpiry(key) }, 'Expiry'),
        h('button', { type: 'button', class: 'small secondary', 'data-action': 'policy', onclick: () => editPolicy(key) }, 'Limits & IPs'),
        h('button', { type: 'button', class: 'small secondary', 'data-action': 'credits', onclick: () => editCredits(key) }, 'Credits')));
    body.appendChild(row);
  }
}

function keyLabel(key) {
  return key.name ? `“${key.name}” (${key.prefix}…)` : `${key.prefix}…`;
}

$('create-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const name = $('create-name').value.trim();
  const expires = fromLocalInput($('create-expires').value);
  if (expires === undefined) {
    showError('The expiry is not a valid date and time.');
    return;
  }
  const body = { kind: $('create-kind').value, mode: state.mode };
  if (name) body.name = name;
  if (expires) body.expires_at = expires;
  act($('create-button'), async () => {
    const created = await api.createKey(state.business, body);
    $('create-name').value = '';
    $('create-expires').value = '';
    showSecret(created, 'Your new API key');
    await loadKeys();
  });
});

// The raw key: shown once in the dialog, dropped from the page when it closes.
function showSecret(key, title) {
  $('secret-title').textContent = title;
  $('secret-value').textContent = key.key;
  $('secret-copied').textContent = '';
  $('secret-dialog').showModal();
}

function dropSecret() {
  $('secret-value').textContent = '';
  $('secret-copied').textContent = '';
}

$('secret-copy').addEventListener('click', async () => {
  const text = $('secret-value').textContent;
  try {
    await navigator.clipboard.writeText(text);
    $('secret-copied').textContent = 'Copied to the clipboard.';
  } catch {
    // No clipboard permission: select it so Ctrl+C works.
    const range = document.createRange();
    range.selectNodeContents($('secret-value'));
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    $('secret-copied').textContent = 'Selected: press Ctrl+C (⌘C) to copy.';
  }
});
$('secret-done').addEventListener('click', () => {
  dropSecret();
  $('secret-dialog').close();
});
$('secret-dialog').addEventListener('close', dropSecret);
$('secret-dialog').addEventListener('cancel', (event) => {
  // Escape would close it before the key is stored: ask for the button instead.
  event.preventDefault();
});

// A yes/no dialog; resolves to the grace seconds (rotation) or true, or null if cancelled.
function confirmDialog(title, text, { confirmLabel = 'Confirm', grace = false } = {}) {
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  $('confirm-ok').textContent = confirmLabel;
  $('grace-label').hidden = !grace;
  $('grace').value = '0';
  clearError();
  const dialog = $('confirm-dialog');
  return new Promise((resolve) => {
    const done = (value) => {
      $('confirm-ok').removeEventListener('click', ok);
      $('confirm-cancel').removeEventListener('click', cancel);
      dialog.removeEventListener('close', cancel);
      if (dialog.open) dialog.close();
      resolve(value);
    };
    const ok = () => done(grace ? Number($('grace').value) : true);
    const cancel = () => done(null);
    $('confirm-ok').addEventListener('click', ok);
    $('confirm-cancel').addEventListener('click', cancel);
    dialog.addEventListener('close', cancel);
    dialog.showModal();
  });
}

async function rotate(key, button) {
  const grace = await confirmDialog('Rotate key', `Rotating ${keyLabel(key)} issues a new raw key. Clients using the old one must switch to the new one.`, { confirmLabel: 'Rotate', grace: true });
  if (grace === null) return;
  await act(button, async () => {
    const rotated = await api.rotate(key.id, grace);
    showSecret(rotated, 'Your rotated API key');
    await loadKeys();
  });
}

async function setActive(key, active, button) {
  if (!active) {
    const ok = await confirmDialog('Deactivate key', `Requests with ${keyLabel(key)} will be refused within seconds, until you activate it again.`, { confirmLabel: 'Deactivate' });
    if (!ok) return;
  }
  await act(button, async () => {
    await api.setActive(key.id, active);
    notice(`${keyLabel(key)} is now ${active ? 'active' : 'inactive'}.`);
    await loadKeys();
  });
}

let expiryKey = null;
function editExpiry(key) {
  expiryKey = key;
  $('expiry-title').textContent = `Expiry of ${keyLabel(key)}`;
  $('expiry-input').value = toLocalInput(key.expires_at);
  clearError();
  $('expiry-dialog').showModal();
}
async function saveExpiry(value, button) {
  const key = expiryKey;
  await act(button, async () => {
    const updated = await api.setExpiry(key.id, value);
    $('expiry-dialog').close();
    notice(updated.expires_at ? `${keyLabel(key)} now expires ${when(updated.expires_at)}.` : `${keyLabel(key)} no longer expires.`);
    await loadKeys();
  });
}
$('expiry-save').addEventListener('click', (e) => {
  const value = fromLocalInput($('expiry-input').value);
  if (value === undefined || value === null) {
    showError('Choose a date and time for the expiry, or press “Never expire”.');
    return;
  }
  saveExpiry(value, e.currentTarget);
});
$('expiry-clear').addEventListener('click', (e) => saveExpiry(null, e.currentTarget));
$('expiry-cancel').addEventListener('click', () => $('expiry-dialog').close());

// ----- usage -----

async function loadUsage(keyId) {
  const key = state.keys.find((k) => k.id === keyId);
  if (!key) {
    state.usageKey = null;
    $('usage-card').hidden = true;
    return;
  }
  const usage = await api.usage(keyId);
  state.usageKey = keyId;
  for (const row of $('keys-body').children) row.classList.toggle('selected', row.dataset.keyId === keyId);
  $('usage-name').textContent = key.name ? `${key.name} (${key.prefix}…)` : `${key.prefix}…`;
  $('usage-total').textContent = String(usage.total);
  $('usage-last').textContent = usage.last_used_at ? `${when(usage.last_used_at)} (${relative(usage.last_used_at)})` : 'never';
  $('usage-card').hidden = false;
  drawUsage($('usage-chart'), usage.hours);
}
$('usage-refresh').addEventListener('click', (e) => act(e.currentTarget, loadKeys));

// ----- sessions -----

async function loadSessions() {
  const answer = await api.sessions();
  const body = $('sessions-body');
  clear(body);
  for (const s of answer.sessions.slice().reverse()) {
    body.appendChild(h('tr', { dataset: { sessionId: s.id }, class: s.current ? 'current' : null },
      h('td', {}, h('code', {}, s.id), s.current ? h('span', { class: 'badge state-active' }, 'this browser') : null),
      h('td', { title: s.created_at }, when(s.created_at)),
      h('td', { title: s.access_expires_at }, when(s.access_expires_at)),
      h('td', {}, when(s.refresh_expires_at)),
      h('td', { class: 'actions' },
        h('button', { type: 'button', class: 'small danger', 'data-action': 'revoke', onclick: (e) => revoke(s, e.currentTarget) }, s.current ? 'Sign out here' : 'Revoke'))));
  }
}
$('sessions-refresh').addEventListener('click', (e) => act(e.currentTarget, loadSessions));

async function revoke(session, button) {
  const ok = await confirmDialog('Revoke session', session.current
    ? 'This signs you out of this page.'
    : `Session ${session.id} will be signed out everywhere within seconds.`, { confirmLabel: 'Revoke' });
  if (!ok) return;
  await act(button, async () => {
    await api.revokeSession(session.id);
    if (session.current) {
      forget();
      showSignin();
      notice('You are signed out.');
      return;
    }
    notice(`Session ${session.id} revoked.`);
    await loadSessions();
  });
}

$('error-close').addEventListener('click', clearError);
initPolicy({ act, showError, notice, reload: loadKeys, keyLabel });
initCredits({ act, notice, reload: loadKeys, keyLabel });

setMode('live');
initIssuers({ act, notice });
endOnLeave();
showSignin();
