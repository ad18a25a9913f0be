// Identity providers: the trusted issuers of the selected business (tokens from the
// business's own OIDC provider, accepted next to its API keys). List with the pinned key
// ids and the last refresh, add one (its keys are fetched and pinned before the answer),
// remove one. Every string from the API goes in through textContent (dom.js `h`).

import { call } from './api.js';
import { $, clear, h, when } from './dom.js';

const seg = encodeURIComponent;
let hooks = { act: async (_button, f) => f(), notice: () => {} };
let business = null;

/** `act` runs an action showing its errors; `notice` shows a short message. */
export function initIssuers(given) {
  hooks = given;
  $('issuer-form').addEventListener('submit', (event) => {
    event.preventDefault();
    hooks.act($('issuer-add'), add);
  });
  $('issuers-refresh').addEventListener('click', (e) => hooks.act(e.currentTarget, () => loadIssuers(business)));
}

/** Shows the issuers of `id` (the business picked in the page). */
export async function loadIssuers(id) {
  business = id;
  if (!business) return;
  const answer = await call('GET', `/v1/businesses/${seg(business)}/issuers`);
  render(answer.issuers);
}

function keysText(issuer) {
  return issuer.keys.map((k) => (k.alg ? `${k.kid} (${k.alg})` : `${k.kid} (${k.kty})`)).join(', ') || '—';
}

function render(issuers) {
  const body = $('issuers-body');
  clear(body);
  $('issuers-empty').hidden = issuers.length > 0;
  for (const issuer of issuers) {
    const refreshed = issuer.source === 'static' ? 'static JWKS' : when(issuer.refreshed_at, 'not yet');
    body.appendChild(h('tr', { dataset: { issuerId: issuer.id } },
      h('td', {}, h('code', {}, issuer.issuer), h('div', { class: 'muted' }, issuer.id)),
      h('td', {}, issuer.source),
      h('td', {}, issuer.audiences.join(', ')),
      h('td', {}, issuer.algorithms.join(', ')),
      h('td', {}, h('code', {}, issuer.businesses_claim)),
      h('td', { class: 'issuer-keys' }, keysText(issuer)),
      h('td', {}, refreshed, issuer.refresh_error ? h('div', { class: 'issuer-error', role: 'status' }, issuer.refresh_error) : null),
      h('td', { class: 'actions' },
        h('button', { type: 'button', class: 'small danger', 'data-action': 'remove-issuer', onclick: (e) => remove(issuer, e.currentTarget) }, 'Remove'))));
  }
}

function list(text) {
  return text.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
}

async function add() {
  const body = {
    issuer: $('issuer-url').value.trim(),
    audiences: list($('issuer-audiences').value),
    algorithms: [...document.querySelectorAll('#issuer-form input[name=alg]:checked')].map((el) => el.value),
    businesses_claim: $('issuer-claim').value.trim() || undefined,
  };
  const jwksUri = $('issuer-jwks-uri').value.trim();
  if (jwksUri) body.jwks_uri = jwksUri;
  const created = await call('POST', `/v1/businesses/${seg(business)}/issuers`, body);
  $('issuer-form').reset();
  hooks.notice(`Identity provider ${created.issuer} trusted: ${created.keys.length} key(s) pinned.`);
  await loadIssuers(business);
}

/** First click arms the button, the second removes. */
async function remove(issuer, button) {
  if (button.dataset.armed !== 'yes') {
    button.dataset.armed = 'yes';
    button.textContent = 'Confirm remove';
    return;
  }
  await hooks.act(button, async () => {
    await call('DELETE', `/v1/issuers/${seg(issuer.id)}`);
    hooks.notice(`Identity provider ${issuer.issuer} removed: its tokens are refused within seconds.`);
    await loadIssuers(business);
  });
}
