// Building elements. Text always goes in through textContent (or attribute values set
// one by one), never parsed as HTML: a string from the API can never become markup.

/** h('td', {class: 'x', title: 't'}, 'text', child, ...) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'dataset') Object.assign(el.dataset, value);
    else if (name.startsWith('on') && typeof value === 'function') el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

export function $(id) {
  return document.getElementById(id);
}

export function clear(el) {
  el.replaceChildren();
}

/** "2026-11-23 14:05 UTC" from an RFC 3339 string, or the fallback. */
export function when(rfc3339, fallback = '—') {
  if (!rfc3339) return fallback;
  const d = new Date(rfc3339);
  if (Number.isNaN(d.getTime())) return fallback;
  return d.toISOString().slice(0, 16).replace('T', ' ') + ' UTC';
}

/** "3 min ago", "in 2 days" … */
export function relative(rfc3339, now = Date.now()) {
  if (!rfc3339) return null;
  const t = new Date(rfc3339).getTime();
  if (Number.isNaN(t)) return null;
  const secs = Math.round((t - now) / 1000);
  const abs = Math.abs(secs);
  const [n, unit] = abs < 60 ? [abs, 's'] : abs < 3600 ? [Math.floor(abs / 60), 'min'] : abs < 86400 ? [Math.floor(abs / 3600), 'h'] : [Math.floor(abs / 86400), 'd'];
  if (abs < 10) return 'just now';
  return secs < 0 ? `${n} ${unit} ago` : `in ${n} ${unit}`;
}

/** The value for a datetime-local input (read as UTC) from an RFC 3339 string. */
export function toLocalInput(rfc3339) {
  if (!rfc3339) return '';
  const d = new Date(rfc3339);
  return Number.isNaN(d.getTime()) ? '' : d.toISOString().slice(0, 16);
}

/** RFC 3339 (UTC) from a datetime-local input value read as UTC, or null when empty. */
export function fromLocalInput(value) {
  if (!value) return null;
  const full = value.length === 16 ? value + ':00' : value;
  const d = new Date(full + 'Z');
  if (Number.isNaN(d.getTime())) return undefined;
  return d.toISOString().replace(/\.\d{3}Z$/, 'Z');
}
