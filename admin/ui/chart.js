// The usage chart: requests per hour as an inline SVG bar chart, drawn here (no library).
// Labels go in through textContent like everything else.

const NS = 'http://www.w3.org/2000/svg';
const HOUR = 3600 * 1000;

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

/** An axis maximum at or above n with four whole-number steps of 1, 2, 2.5 or 5 × 10^k. */
function niceMax(n) {
  const raw = Math.max(1, n / 4);
  const p = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) {
    const step = m * p;
    if (step >= raw && Number.isInteger(step)) return 4 * step;
  }
  return 40 * p;
}

/**
 * Draws `hours` ([{hour: RFC 3339 hour start, count}]) over the last `span` hours up to
 * the current hour, into `container` (emptied first).
 */
export function drawUsage(container, hours, span = 72, now = Date.now()) {
  const end = Math.floor(now / HOUR) * HOUR;
  const start = end - (span - 1) * HOUR;
  const counts = new Array(span).fill(0);
  for (const { hour, count } of hours || []) {
    const t = new Date(hour).getTime();
    if (Number.isNaN(t)) continue;
    const i = Math.round((t - start) / HOUR);
    if (i >= 0 && i < span) counts[i] += Number(count) || 0;
  }
  const W = 760, H = 220, left = 44, right = 12, top = 12, bottom = 34;
  const plotW = W - left - right, plotH = H - top - bottom;
  const max = niceMax(Math.max(...counts));
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', class: 'usage-svg', 'data-total': counts.reduce((a, b) => a + b, 0), 'data-bars': counts.filter((c) => c > 0).length });
  root.appendChild(svg('title', {}, `Requests per hour, last ${span} hours`));

  // Grid lines and y labels.
  for (let k = 0; k <= 4; k++) {
    const v = (max * k) / 4;
    const y = top + plotH - (plotH * k) / 4;
    root.appendChild(svg('line', { x1: left, x2: W - right, y1: y, y2: y, class: k === 0 ? 'axis' : 'grid' }));
    root.appendChild(svg('text', { x: left - 6, y: y + 4, 'text-anchor': 'end', class: 'tick' }, Number.isInteger(v) ? String(v) : v.toFixed(1)));
  }
  const slot = plotW / span;
  counts.forEach((c, i) => {
    const t = new Date(start + i * HOUR);
    if (t.getUTCHours() === 0) {
      const x = left + i * slot;
      root.appendChild(svg('line', { x1: x, x2: x, y1: top, y2: top + plotH, class: 'day' }));
      root.appendChild(svg('text', { x: x + 2, y: H - 18, class: 'tick' }, t.toISOString().slice(5, 10)));
    }
    if (c > 0) {
      const bh = Math.max(1.5, (plotH * c) / max);
      const bar = svg('rect', { x: left + i * slot + 1, y: top + plotH - bh, width: Math.max(1, slot - 2), height: bh, class: 'bar' });
      bar.appendChild(svg('title', {}, `${t.toISOString().slice(0, 13).replace('T', ' ')}:00 UTC: ${c} request${c === 1 ? '' : 's'}`));
      root.appendChild(bar);
    }
  });
  root.appendChild(svg('text', { x: W - right, y: H - 4, 'text-anchor': 'end', class: 'tick' }, 'now'));
  container.replaceChildren(root);
  return counts;
}
