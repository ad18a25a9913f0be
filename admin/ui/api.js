// The admin API client. The access and refresh tokens live only in this module's
// variables: never in a cookie, localStorage, sessionStorage, the URL or the console.
// A reload forgets them, and the member signs in again.

let accessToken = null;
let refreshToken = null;
/** When the access token expires (ms since the epoch, by this browser's clock), and how
 *  early to refresh it: 5 s, or a fifth of its lifetime if that is shorter. */
let expiresAt = 0;
let margin = 0;

/** An API failure, with the server's message (or a description of what went wrong). */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Called when the session is over (sign in again). Set by the app. */
let onSignedOut = () => {};
export function whenSignedOut(callback) {
  onSignedOut = callback;
}

export function signedIn() {
  return accessToken !== null;
}

export function forget() {
  accessToken = null;
  refreshToken = null;
  expiresAt = 0;
}

async function send(method, path, body, token) {
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method, headers, cache: 'no-store', credentials: 'omit', redirect: 'error', referrerPolicy: 'no-referrer' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, 'network', 'The server could not be reached. Check your connection and try again.');
  }
  let data = null;
  const text = await response.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const message = data && typeof data.error === 'string' && data.error
      ? data.error
      : data && data.error && typeof data.error.message === 'string'
        ? data.error.message
        : `The server answered ${response.status} ${response.statusText}`.trim();
    const code = data && typeof data.code === 'string' ? data.code : data && data.error && data.error.code ? String(data.error.code) : 'http_' + response.status;
    throw new ApiError(response.status, code, message);
  }
  return data;
}

function keep(answer) {
  accessToken = answer.accessToken;
  refreshToken = answer.refreshToken;
  const lifetime = Number(answer.expiresIn || 0) * 1000;
  expiresAt = Date.now() + lifetime;
  margin = Math.min(5000, lifetime / 5);
}

/** Signs in; the answer's businesses are returned, the tokens kept here. */
export async function signIn(email, password) {
  const answer = await send('POST', '/auth/signin', { email, password });
  keep(answer);
  return answer.businesses;
}

let refreshing = null;
async function refresh() {
  if (!refreshToken) return false;
  if (!refreshing) {
    const token = refreshToken;
    refreshing = send('POST', '/auth/refresh', { refresh_token: token })
      .then((answer) => { keep(answer); return true; })
      .catch(() => false)
      .finally(() => { refreshing = null; });
  }
  return refreshing;
}

/** An authenticated call. An access token at (or just before) its expiry is refreshed
 *  first; a 401 anyway gets one refresh and retry. */
export async function call(method, path, body) {
  if (!accessToken) throw new ApiError(401, 'signed_out', 'You are signed out. Sign in again.');
  if (Date.now() >= expiresAt - margin && !(await refresh())) {
    ended();
    throw new ApiError(401, 'session_ended', SESSION_ENDED);
  }
  try {
    return await send(method, path, body, accessToken);
  } catch (e) {
    if (!(e instanceof ApiError) || e.status !== 401) throw e;
    if (await refresh()) {
      try {
        return await send(method, path, body, accessToken);
      } catch (again) {
        if (!(again instanceof ApiError) || again.status !== 401) throw again;
      }
    }
    ended();
    throw new ApiError(401, 'session_ended', SESSION_ENDED);
  }
}

const SESSION_ENDED = 'Your session has ended. Please sign in again.';

function ended() {
  forget();
  onSignedOut(SESSION_ENDED);
}

/** Ends this session on the server (best effort) and forgets the tokens. */
export async function signOut() {
  const token = accessToken;
  forget();
  if (token) {
    try {
      await send('POST', '/auth/logout', undefined, token);
    } catch {
      // Already over on the server: nothing more to do.
    }
  }
}

/** Leaving or reloading the page loses the tokens, so end their session on the server too. */
export function endOnLeave() {
  window.addEventListener('pagehide', () => {
    const token = accessToken;
    forget();
    if (!token) return;
    // keepalive lets the request outlive the page.
    fetch('/auth/logout', { method: 'POST', headers: { Authorization: `Bearer ${token}` }, keepalive: true, credentials: 'omit', referrerPolicy: 'no-referrer' }).catch(() => {});
  });
}

const seg = encodeURIComponent;
export const api = {
  me: () => call('GET', '/v1/me'),
  keys: (business) => call('GET', `/v1/businesses/${seg(business)}/keys`),
  createKey: (business, body) => call('POST', `/v1/businesses/${seg(business)}/keys`, body),
  rotate: (id, graceSecs) => call('POST', `/v1/keys/${seg(id)}/rotate`, { grace_secs: graceSecs }),
  setActive: (id, active) => call('POST', `/v1/keys/${seg(id)}/${active ? 'activate' : 'deactivate'}`),
  setExpiry: (id, expiresAt) => call('PATCH', `/v1/keys/${seg(id)}`, { expires_at: expiresAt }),
  updateKey: (id, body) => call('PATCH', `/v1/keys/${seg(id)}`, body),
  businessLimits: (business) => call('GET', `/v1/businesses/${seg(business)}/limits`),
  setBusinessLimits: (business, body) => call('PATCH', `/v1/businesses/${seg(business)}/limits`, body),
  usage: (id) => call('GET', `/v1/keys/${seg(id)}/usage`),
  credits: (id) => call('GET', `/v1/keys/${seg(id)}/credits`),
  setCredits: (id, body) => call('PUT', `/v1/keys/${seg(id)}/credits`, body),
  addCredits: (id, body) => call('POST', `/v1/keys/${seg(id)}/credits/add`, body),
  sessions: () => call('GET', '/v1/sessions'),
  revokeSession: (id) => call('DELETE', `/v1/sessions/${seg(id)}`),
};
