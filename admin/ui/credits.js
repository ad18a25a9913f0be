// A key's credits: how many uses it has left (as admin knows them), its refill, and a dialog
// per key to set the balance, add to it or make the key unlimited again. The gateways
// enforce a change within seconds. Strings from the API go in with textContent only.

import { api } from './api.js';
import { $, h, when } from './dom.js';

let hooks = null;
let creditsKey = null;

/** `act(button, fn)`, `notice(text)`, `reload()` and `keyLabel(key)` from the page. */
export function initCredits(pageHooks) {
  hooks = pageHooks;
  $('credits-set').addEventListener('click', (e) => setCredits(e.currentTarget));
  $('credits-add').addEventListener('click', (e) => addCredits(e.currentTarget));
  $('credits-unlimited').addEventListener('click', (e) => clearCredits(e.currentTarget));
  $('credits-cancel').addEventListener('click', () => $('credits-dialog').close());
  // The key rows say what is left: read it again once the dialog is done with.
  $('credits-dialog').addEventListener('close', () => hooks.act(null, hooks.reload));
}

/** One line about a credits view: "42 of 100 credits left · refilled to 100 every month". */
function describe(view) {
  if (!view.limited) return 'unlimited (no credits)';
  let text = `${view.remaining} of ${view.balance} credits left`;
  if (view.refill) text += ` · refilled to ${view.refill.amount} every ${view.refill.interval}`;
  return text;
}

/** Under a key's name, for a key with credits: its balance, filled in when admin answers. */
export function creditsSummary(key) {
  if (!key.has_credits) return null;
  const line = h('div', { class: 'small muted credits-summary' }, 'credits …');
  api.credits(key.id).then((view) => { line.textContent = describe(view); }, () => { line.textContent = 'credits: unavailable'; });
  return line;
}

function show(view) {
  $('credits-now').textContent = describe(view);
  $('credits-reconciled').textContent = view.limited
    ? `Spending last reported by a gateway: ${when(view.reconciled_at, 'not yet')}${view.next_refill_at ? ` · next refill ${when(view.next_refill_at)}` : ''}`
    : '';
}

export async function editCredits(key) {
  creditsKey = key;
  $('credits-title').textContent = `Credits of ${hooks.keyLabel(key)}`;
  $('credits-remaining').value = '';
  $('credits-amount').value = '';
  $('credits-refill-amount').value = '';
  $('credits-refill-interval').value = '';
  for (const el of document.querySelectorAll('.dialog-error')) el.hidden = true;
  $('credits-now').textContent = '…';
  $('credits-reconciled').textContent = '';
  $('credits-dialog').showModal();
  await hooks.act(null, async () => show(await api.credits(key.id)));
}

/** A whole number from an input, or null when empty; throws a readable error otherwise. */
function whole(id, what) {
  const text = $(id).value.trim();
  if (text === '') return null;
  if (!/^\d+$/.test(text)) throw new Error(`${what} must be a whole number.`);
  return Number(text);
}

async function setCredits(button) {
  const key = creditsKey;
  await hooks.act(button, async () => {
    const remaining = whole('credits-remaining', 'The balance');
    if (remaining === null) throw new Error('Give the balance to set.');
    const interval = $('credits-refill-interval').value;
    const amount = whole('credits-refill-amount', 'The refill amount');
    const body = { remaining, refill: interval ? { interval, amount: amount ?? remaining } : null };
    show(await api.setCredits(key.id, body));
    hooks.notice(`Credits of ${hooks.keyLabel(key)} set: the gateways apply them within seconds.`);
    await hooks.reload();
  });
}

async function addCredits(button) {
  const key = creditsKey;
  await hooks.act(button, async () => {
    const amount = whole('credits-amount', 'The amount');
    if (amount === null) throw new Error('Give the amount to add.');
    show(await api.addCredits(key.id, { amount }));
    hooks.notice(`Added ${amount} credits to ${hooks.keyLabel(key)}.`);
    await hooks.reload();
  });
}

async function clearCredits(button) {
  const key = creditsKey;
  await hooks.act(button, async () => {
    show(await api.setCredits(key.id, { remaining: null }));
    hooks.notice(`${hooks.keyLabel(key)} is unlimited again.`);
    await hooks.reload();
  });
}
