// The audit log of the selected business: who changed what, when and from where, newest
// first, a page at a time. Every string from the API goes in through textContent (h()).

import { api } from './api.js';
import { $, clear, h, when } from './dom.js';

const PAGE = 25;
let business = null;
let cursor = null;

function who(actor) {
  if (actor.kind === 'operator') return 'operator';
  return actor.id ? `${actor.kind} ${actor.id}` : actor.kind;
}

function details(entry) {
  return Object.entries(entry.details || {}).map(([name, value]) => `${name}: ${value === null ? 'none' : value}`).join(', ');
}

function row(entry) {
  return h('tr', { dataset: { auditId: String(entry.id) } },
    h('td', { title: entry.at }, when(entry.at)),
    h('td', {}, who(entry.actor)),
    h('td', {}, entry.actor.address || '—'),
    h('td', {}, h('code', {}, entry.action)),
    h('td', {}, `${entry.object.type} `, h('code', {}, entry.object.id)),
    h('td', { class: 'muted' }, details(entry)));
}

function showError(error) {
  $('audit-error').textContent = error && error.message ? error.message : String(error);
  $('audit-error').hidden = false;
}

async function page(older) {
  if (!business) return;
  const query = new URLSearchParams({ business, limit: String(PAGE) });
  if (older && cursor) query.set('cursor', cursor);
  const answer = await api.audit(query.toString());
  const body = $('audit-body');
  if (!older) clear(body);
  for (const entry of answer.entries) body.appendChild(row(entry));
  cursor = answer.next_cursor;
  $('audit-more').hidden = !cursor;
  $('audit-empty').hidden = body.children.length > 0;
  $('audit-error').hidden = true;
}

/** Shows the newest entries of `businessId` (called when the business or its keys change). */
export async function loadAudit(businessId) {
  business = businessId;
  cursor = null;
  await page(false);
}

async function run(button, older) {
  button.disabled = true;
  try {
    await page(older);
  } catch (e) {
    showError(e);
  } finally {
    button.disabled = false;
  }
}

$('audit-refresh').addEventListener('click', (e) => run(e.currentTarget, false));
$('audit-more').addEventListener('click', (e) => run(e.currentTarget, true));
