// The engine's dashboard: one page over the admin JSON API (/v1), hash-routed, no dependencies.
'use strict';

const TOKEN_KEY = 'engine.adminToken';
const STATUSES = ['pending', 'running', 'succeeded', 'dead', 'cancelled'];
const PAGE = 50;
const $ = (id) => document.getElementById(id);
const view = $('view');

let gen = 0; // bumped on every navigation: async work of an older page drops its result
let timer = 0;
let refresh = () => {}; // re-runs the current page's load now
let needToken = false;
let subNames = null; // subscription names, from the last /v1/stats
let shownDead = []; // ids in the dead letters table
let shownDeadScope = ''; // '?scope=group' when the dead letters shown come from several engines
let members; // cluster mode: the last /v1/cluster; null when cluster mode is off

// ---- DOM

function h(tag, props, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'testid') el.dataset.testid = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const kid of kids.flat(9)) if (kid != null && kid !== false) el.append(kid);
  return el;
}

// Make `old` look like `neu`, keeping the nodes that stay (so polling keeps hover, focus,
// selection and scroll). Dynamic parts carry no listeners: clicks are delegated.
function morph(old, neu) {
  if (old.nodeType !== neu.nodeType || old.nodeName !== neu.nodeName) return old.replaceWith(neu);
  if (old.nodeType !== 1) {
    if (old.nodeValue !== neu.nodeValue) old.nodeValue = neu.nodeValue;
    return;
  }
  for (const a of [...old.attributes]) if (!neu.hasAttribute(a.name)) old.removeAttribute(a.name);
  for (const a of [...neu.attributes]) if (old.getAttribute(a.name) !== a.value) old.setAttribute(a.name, a.value);
  const o = [...old.childNodes];
  const n = [...neu.childNodes];
  n.forEach((c, i) => (i < o.length ? morph(o[i], c) : old.append(c)));
  o.slice(n.length).forEach((c) => c.remove());
}

// A page: a static part built once (forms), then results that polling updates in place.
function page(title, ...statics) {
  document.title = `${title} · Engine`;
  view.replaceChildren(...statics, h('div', { id: 'results' }, h('p', { class: 'muted', 'data-loading': '' }, 'Loading…')));
}
function show(node) {
  const box = $('results');
  if (!box) return;
  if (box.firstChild && box.childNodes.length === 1) morph(box.firstChild, node);
  else box.replaceChildren(node);
}

// ---- formatting

const pad = (n, w = 2) => String(n).padStart(w, '0');
const num = (v) => (typeof v === 'number' ? v.toLocaleString('en-US', { maximumFractionDigits: 2 }) : v == null ? '—' : String(v));
const clock = (d) => `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
// A local time; `short` leaves out today's date.
function time(ms, withMs, short) {
  if (ms == null) return '—';
  const d = new Date(ms);
  // Past what a date can hold: a workflow that waits for an event only.
  if (Number.isNaN(d.getTime())) return 'never';
  const day = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  const today = short && d.toDateString() === new Date().toDateString();
  return h('span', { class: 'nowrap', title: d.toISOString() },
    `${today ? '' : day + ' '}${clock(d)}${withMs ? '.' + pad(d.getMilliseconds(), 3) : ''}`);
}
function dur(ms) {
  if (ms == null) return '—';
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  const s = Math.round(ms / 1000);
  return s < 3600 ? `${Math.floor(s / 60)}m ${s % 60}s` : `${Math.floor(s / 3600)}h ${Math.floor(s / 60) % 60}m`;
}
const calls = (n) => `${n} call${n === 1 ? '' : 's'}`;
const rel = (ms) => (ms > Date.now() ? `in ${dur(ms - Date.now())}` : `${dur(Date.now() - ms)} ago`);
const badge = (text, cls) => h('span', { class: `badge ${cls}` }, text);
const statusBadge = (s, testid) => h('span', { class: `badge s-${s}`, testid }, s);
const bytes = (b) => (b == null ? h('span', { class: 'muted' }, '—') :
  b.encoding === 'utf8' ? b.data : h('span', { title: 'percent-encoded bytes' }, b.data, ' ', badge('bytes', '')));
function preview(b, testid) {
  if (b == null) return h('p', { class: 'muted', testid }, 'none');
  let text = b.data;
  if (b.encoding === 'utf8') {
    try { text = JSON.stringify(JSON.parse(text), null, 2); } catch { /* not JSON: as is */ }
  }
  const max = 8000;
  return [
    h('pre', { class: 'preview', testid }, text.length > max ? text.slice(0, max) + '\n…' : text),
    h('p', { class: 'muted' }, `${b.data.length.toLocaleString('en-US')} characters`,
      b.encoding === 'percent' ? ', binary (percent-encoded)' : '', text.length > max ? ', truncated' : ''),
  ];
}
const callLink = (id) => h('a', { href: `#/calls/${encodeURIComponent(id)}`, class: 'mono', testid: 'call-link' }, id);
const subLink = (name) => h('a', { href: `#/calls?subscription=${encodeURIComponent(name)}` }, name);
const td = (v, cls, testid, colspan) => h('td', { class: cls, testid, colspan }, v);
const ntd = (v, testid) => td(num(v), 'num', testid);
// A table; a heading starting with '#' is a numeric column.
const table = (testid, heads, rows, empty) => h('table', { testid },
  h('thead', null, h('tr', null, heads.map((k) => k !== false && h('th', { class: k[0] === '#' ? 'num' : null }, k[0] === '#' ? k.slice(1) : k)))),
  h('tbody', null, rows.length ? rows : h('tr', null, td(empty, 'empty', null, heads.length))));

// ---- API

const apiError = (status, message) => Object.assign(new Error(message), { status });

async function api(path, method = 'GET', body) {
  const headers = { Accept: 'application/json' };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, { method, headers, cache: 'no-store', body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw apiError(0, `cannot reach the engine (${e.message})`);
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { /* a plain-text error */ }
  if (res.status === 401) {
    if (token) sessionStorage.removeItem(TOKEN_KEY);
    askToken(token ? 'That token was refused.' : (data && data.error) || '');
    throw apiError(401, 'unauthorized');
  }
  if (!res.ok) {
    const why = (data && data.error) || text.trim() || res.statusText;
    throw apiError(res.status, `${res.status}: ${why}`);
  }
  return data;
}

async function subscriptions() {
  if (!subNames) subNames = Object.keys((await api('/v1/stats')).subscriptions || {});
  if (members === undefined) await clusterView();
  return subNames;
}

// Cluster mode: the members this engine knows of (null when cluster mode is off).
async function clusterView() {
  const view = await api('/v1/cluster');
  members = view && view.enabled ? view : null;
  for (const a of document.querySelectorAll('[data-nav="/cluster"]')) a.hidden = !members;
  return members;
}

// ---- chrome: token form, banner, flash, "updated"

function askToken(msg) {
  needToken = true;
  clearTimeout(timer);
  $('banner').hidden = true;
  $('updated').textContent = '';
  $('token-msg').textContent = msg;
  $('token-form').hidden = false;
  $('token-clear').hidden = true;
  $('token-input').focus();
}
$('token-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const token = $('token-input').value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $('token-input').value = '';
  $('token-form').hidden = true;
  needToken = false;
  route();
});
$('token-clear').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  route();
});

function ok() {
  $('banner').hidden = true;
  $('updated').textContent = `updated ${clock(new Date())}`;
  $('token-clear').hidden = !sessionStorage.getItem(TOKEN_KEY);
}
function failed(e) {
  if (e.status === 401) return; // the token form says it
  $('banner').textContent = `Error: ${e.message}`;
  $('banner').hidden = false;
}
let flashTimer = 0;
function flash(msg, kind) {
  const f = $('flash');
  f.className = `banner ${kind}`;
  f.querySelector('span').textContent = msg;
  f.hidden = false;
  clearTimeout(flashTimer);
  if (kind === 'ok') flashTimer = setTimeout(() => (f.hidden = true), 6000);
}
$('flash').querySelector('button').addEventListener('click', () => ($('flash').hidden = true));

// Run `load` now and then every `every()` ms while the page stays; a 400/404 stops it.
function poll(load, every) {
  const my = gen;
  const tick = async () => {
    clearTimeout(timer);
    if (my !== gen || needToken) return;
    let again = true;
    if (!document.hidden) {
      try {
        await load(my);
        if (my === gen) ok();
      } catch (e) {
        if (my !== gen) return;
        failed(e);
        if ($('results')?.querySelector('[data-loading]')) show(h('p', { class: 'empty' }, e.status === 401 ? '' : e.message));
        again = e.status !== 400 && e.status !== 404;
      }
    }
    if (my === gen && again && every && !needToken) timer = setTimeout(tick, every());
  };
  refresh = tick;
  tick();
}

async function act(label, fn) {
  try {
    const msg = await fn();
    if (msg) flash(msg, 'ok');
  } catch (e) {
    if (e.status !== 401) flash(`${label} failed: ${e.message}`, 'error');
  }
  refresh();
}

// ---- overview

function pick(stats, name, field) {
  const sub = stats.subscriptions[name] || {};
  return sub[field] !== undefined ? sub[field] : stats[field] && stats[field][name];
}
// Throughput, e.g. {created_per_second, finished_per_second, window_seconds}: "created 1.5/s · finished 1/s".
function rates(tp) {
  if (tp == null) return '—';
  if (typeof tp !== 'object') return `${num(tp)}/s`;
  return Object.entries(tp)
    .filter(([k, v]) => typeof v === 'number' && !k.startsWith('window'))
    .map(([k, v]) => {
      const m = k.match(/^(.*)_per_s(econd)?$/);
      return m ? `${m[1].replace(/_/g, ' ')} ${num(v)}/s` : `${k.replace(/_/g, ' ')} ${num(v)}`;
    })
    .join(' · ') || '—';
}
// Lag: a list of {topic, partition, lag, ...}, or {total, partitions: [...]}, or a number.
const lagRows = (lag) => (Array.isArray(lag) ? lag : (lag && Array.isArray(lag.partitions) && lag.partitions) || [])
  .filter((l) => l && typeof l === 'object');
function lagTotal(lag) {
  if (typeof lag === 'number') return lag;
  if (lag && typeof lag.total === 'number') return lag.total;
  const rows = lagRows(lag);
  return rows.length ? rows.reduce((a, l) => a + (Number.isFinite(l.lag) ? l.lag : 0), 0) : null;
}

function overviewView(stats) {
  const subs = Object.keys(stats.subscriptions || {}).sort();
  const hasTp = subs.some((n) => pick(stats, n, 'throughput') != null);
  const hasLag = subs.some((n) => pick(stats, n, 'lag') != null);
  const win = subs.map((n) => pick(stats, n, 'throughput')).find((t) => t && t.window_seconds);
  const extra = ['consumed', 'dead_lettered'].filter((k) => subs.some((n) => stats.subscriptions[n][k] != null));
  const cols = [...STATUSES, 'in_flight', 'waiting_retry', 'in_memory', ...extra];
  const inFlight = subs.reduce((a, n) => a + (stats.subscriptions[n].in_flight || 0), 0);
  const card = (k, v, href) => h('a', { class: `card ${k}`, href },
    h('div', { class: 'label' }, k.replace('_', ' ')), h('div', { class: 'value', testid: `total-${k}` }, num(v)));
  const cell = (name, k, v) => {
    const href = k === 'dead' ? `#/dead?subscription=${encodeURIComponent(name)}`
      : STATUSES.includes(k) ? `#/calls?subscription=${encodeURIComponent(name)}&status=${k}` : null;
    return td(href && v ? h('a', { href }, num(v)) : num(v), 'num', `sub-${name}-${k}`);
  };
  const lagList = subs.flatMap((n) => lagRows(pick(stats, n, 'lag')).map((l) => [n, l]));
  const lagKeys = [...new Set(lagList.flatMap(([, l]) => Object.keys(l)))].filter((k) => !['topic', 'partition', 'lag'].includes(k));
  const eps = Object.entries(stats.endpoints || {}).sort(([a], [b]) => a.localeCompare(b));
  return h('div', null,
    h('h1', null, 'Overview'),
    h('div', { class: 'cards' },
      STATUSES.map((k) => card(k, stats[k], k === 'dead' ? '#/dead' : `#/calls?status=${k}`)),
      card('in_flight', inFlight, '#/calls?status=running')),
    h('h2', null, 'Subscriptions'),
    subs.filter((n) => stats.subscriptions[n].kafka_down || stats.subscriptions[n].kafka_error).map((n) =>
      h('p', { class: 'banner error', testid: `sub-${n}-kafka-error` }, `${n}: `,
        stats.subscriptions[n].kafka_down ? 'every Kafka broker is down; consumption waits. ' : '',
        stats.subscriptions[n].kafka_error ? `Kafka: ${stats.subscriptions[n].kafka_error}` : '')),
    h('div', { class: 'scroll' }, table('subscriptions',
      ['Subscription', ...cols.map((k) => '#' + k.replace('_', ' ')),
        hasTp && `Throughput${win ? ` (last ${win.window_seconds} s)` : ''}`, hasLag && '#Kafka lag'],
      subs.map((n) => h('tr', { 'data-sub': n }, td(subLink(n)), cols.map((k) => cell(n, k, stats.subscriptions[n][k])),
        hasTp && td(rates(pick(stats, n, 'throughput')), null, `sub-${n}-throughput`),
        hasLag && ntd(lagTotal(pick(stats, n, 'lag')), `sub-${n}-lag`))), 'No subscriptions.')),
    lagList.length > 0 && [h('h2', null, 'Kafka lag by partition'),
      table('lag', ['Subscription', 'Topic', '#Partition', '#Lag', ...lagKeys.map((k) => '#' + k.replace(/_/g, ' '))],
        lagList.map(([n, l]) => h('tr', { testid: `lag-${n}-${l.topic}-${l.partition}` },
          td(n), td(l.topic), ntd(l.partition), ntd(l.lag), lagKeys.map((k) => ntd(l[k])))))],
    h('h2', null, 'Endpoints'),
    table('endpoints', ['Endpoint', '#Adaptive limit', '#In flight', '#Raises', '#Cuts', '#Application errors', 'Paused', 'Last limit change'],
      eps.map(([key, e]) => {
        const last = (e.recent_changes || []).slice(-1)[0];
        return h('tr', { 'data-endpoint': key }, td(key, 'mono'),
          ['limit', 'in_flight', 'raises', 'cuts'].map((k) => ntd(e[k], `endpoint-${key}-${k}`)),
          td(e.usual_error_rate == null ? '—' : `${Math.round(e.usual_error_rate * 100)}%`, 'num', `endpoint-${key}-usual-errors`),
          td(e.paused_until && e.paused_until > Date.now() ? ['until ', time(e.paused_until)] : 'no'),
          td(last ? [`${last.from} → ${last.to}: ${last.detail} `, h('span', { class: 'muted' }, rel(last.at))] : '—', null, `endpoint-${key}-last-change`));
      }), 'No endpoint has been called yet.'),
    eps.some(([, e]) => (e.recent_changes || []).some((c) => c.reason !== 'raise')) && [
      h('h2', null, 'Why the limits moved'),
      table('limit-changes', ['Endpoint', 'When', '#From', '#To', 'What the engine saw and did'],
        eps.flatMap(([key, e]) => (e.recent_changes || []).filter((c) => c.reason !== 'raise')
          .map((c) => ({ key, c })))
          .sort((a, b) => b.c.at - a.c.at).slice(0, 12)
          .map(({ key, c }) => h('tr', { 'data-reason': c.reason }, td(key, 'mono'), td(rel(c.at)), ntd(c.from), ntd(c.to), td(c.detail))))]);
}

function overview() {
  page('Overview');
  poll(async (my) => {
    const stats = await api('/v1/stats');
    if (my !== gen) return;
    subNames = Object.keys(stats.subscriptions || {});
    show(overviewView(stats));
  }, () => 1500);
}

// ---- calls and dead letters

function filterForm(q, subs, base, withStatus) {
  const select = (name, label, values) => h('label', null, label,
    h('select', { name, testid: `filter-${name}` }, values.map(([v, t]) => h('option', { value: v, selected: (q.get(name) || '') === v }, t))));
  const input = (name, label, type, extra) => h('label', null, label,
    h('input', { name, type, value: q.get(name) || '', testid: `filter-${name}`, ...extra }));
  const names = subs.includes(q.get('subscription')) || !q.get('subscription') ? subs : [...subs, q.get('subscription')];
  const form = h('form', { class: 'filters', testid: 'filters' },
    select('subscription', 'Subscription', [['', 'all'], ...names.map((n) => [n, n])]),
    withStatus && select('status', 'Status', [['', 'any'], ...STATUSES.map((s) => [s, s])]),
    input('key', 'Key (exact)', 'text', { placeholder: 'any', size: 16 }),
    input('since', 'Created since', 'datetime-local', { step: 1 }),
    input('until', 'Created before', 'datetime-local', { step: 1 }),
    members && h('label', null, h('input', { type: 'checkbox', name: 'scope', value: 'group', checked: q.get('scope') === 'group', testid: 'filter-group' }), ' Whole cluster'),
    h('button', { type: 'submit', testid: 'filter-apply' }, 'Apply'),
    h('a', { href: `#${base}` }, 'Reset'));
  const apply = () => {
    const p = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) p.set(k, v);
    go(`#${base}${p.toString() ? '?' + p : ''}`);
  };
  form.addEventListener('submit', (e) => { e.preventDefault(); apply(); });
  form.addEventListener('change', (e) => { if (e.target.tagName === 'SELECT' || e.target.type === 'checkbox') apply(); });
  return form;
}

function listQuery(q) {
  const p = new URLSearchParams({ limit: PAGE });
  for (const k of ['subscription', 'status', 'key', 'after', 'scope', 'member']) if (q.get(k)) p.set(k, q.get(k));
  for (const k of ['since', 'until']) {
    const t = q.get(k) ? new Date(q.get(k)).getTime() : NaN;
    if (Number.isFinite(t)) p.set(k, t);
  }
  return p;
}

function pager(base, q, list, n) {
  const next = new URLSearchParams(q);
  next.set('after', list.next);
  const first = new URLSearchParams(q);
  first.delete('after');
  // A page of the whole cluster: each member's list goes on on its own.
  const more = Object.entries(list.members || {}).map(([id, part]) => {
    if (part.error) return h('span', { class: 'err' }, `${id} did not answer: ${part.error}`);
    if (part.next == null) return null;
    const p = new URLSearchParams(q);
    p.delete('scope');
    p.set('member', id);
    p.set('after', part.next);
    return h('a', { href: `#${base}?${p}`, testid: 'member-next' }, `More of ${id} »`);
  });
  return h('div', { class: 'pager' },
    h('span', { class: 'muted' }, `${calls(n)} on this page`),
    q.get('after') && h('a', { href: `#${base}?${first}`, testid: 'first-page' }, '« First page'),
    list.next != null && h('a', { href: `#${base}?${next}`, testid: 'next-page' }, 'Next page »'),
    ...more);
}

// The member column, when the rows come from several engines.
const memberCol = (rows) => rows.some((c) => c.member) ? ['Member'] : [];
const memberCell = (c) => c.member ? [td(c.member, 'mono', 'call-member')] : [];

function clusterPage() {
  page('Cluster', h('h1', null, 'Cluster'));
  poll(async (my) => {
    const view = await clusterView();
    if (my !== gen) return;
    if (!view) return show(h('p', { class: 'empty' }, 'Cluster mode is off: this engine is the whole group.'));
    show(h('div', null,
      h('p', { class: 'muted' }, `Members announce themselves in ${view.topic}; any member answers for all of them.`),
      table('members', ['Member', 'Admin API', 'Heard', 'Started', 'Partitions'],
        view.members.map((m) => h('tr', { testid: 'member-row', 'data-id': m.id },
          td(`${m.id}${m.me ? ' (this engine)' : ''}`, 'mono'), td(m.admin_url, 'mono'),
          td(m.stale ? `stale, ${dur(m.heard_ms_ago)} ago` : `${dur(m.heard_ms_ago)} ago`, m.stale ? 'err' : null),
          td(time(m.started_at, false, true)),
          td(Object.entries(m.assigned || {}).map(([s, ps]) => `${s}: ${ps.join(' ')}`).join('; ') || '-'))),
        'No members heard of yet.')));
  }, () => 5000);
}

const keyCell = (k) => h('td', { class: 'mono key', title: k ? k.data : null }, bytes(k));

function callsView(list, q) {
  const rows = list.calls || [];
  return h('div', null,
    table('calls', ['Call', ...memberCol(rows), 'Subscription', 'Status', 'Key', 'Created', 'Updated', '#Attempts', 'Last error'],
      rows.map((c) => h('tr', { testid: 'call-row', 'data-id': c.id },
        td(callLink(c.id)), ...memberCell(c), td(subLink(c.subscription)), td(statusBadge(c.status)), keyCell(c.key),
        td(time(c.created_at, false, true)), td(time(c.updated_at, false, true)), ntd(c.attempts), td(c.last_error || '', 'err'))),
      'No calls match.'),
    pager('/calls', q, list, rows.length));
}

async function callsPage(q) {
  const my = gen;
  page('Calls', h('h1', null, 'Calls'));
  const subs = await subscriptions();
  if (my !== gen) return;
  const form = filterForm(q, subs, '/calls', true);
  form.append(h('button', { type: 'button', 'data-action': 'reload', testid: 'refresh' }, 'Refresh'));
  $('results').before(form);
  poll(async (my) => {
    const list = await api(`/v1/calls?${listQuery(q)}`);
    if (my === gen) show(callsView(list, q));
  }, null);
}

function deadView(list, q) {
  const rows = list.calls || [];
  shownDead = rows.map((c) => c.id);
  shownDeadScope = q.get('scope') === 'group' || q.get('member') ? '?scope=group' : '';
  const n = rows.length;
  return h('div', null,
    h('div', { class: 'actions' },
      h('button', { type: 'button', class: 'primary', 'data-action': 'redrive-shown', disabled: !n, testid: 'redrive-shown' }, `Redrive all shown (${n})`),
      h('button', { type: 'button', class: 'danger', 'data-action': 'purge-shown', disabled: !n, testid: 'purge-shown' }, `Purge shown (${n})`)),
    table('dead', ['Call', ...memberCol(rows), 'Subscription', 'Key', 'Created', 'Died', '#Attempts', 'Reason', ''],
      rows.map((c) => h('tr', { testid: 'dead-row', 'data-id': c.id },
        td(callLink(c.id)), ...memberCell(c), td(subLink(c.subscription)), keyCell(c.key), td(time(c.created_at, false, true)),
        td(time(c.updated_at, false, true)), ntd(c.attempts), td(c.last_error || '', 'err', 'dead-reason'),
        td(h('button', { type: 'button', class: 'small', 'data-action': 'redrive', 'data-id': c.id, testid: 'redrive-row' }, 'Redrive')))),
      'No dead calls match.'),
    pager('/dead', q, list, n));
}

async function deadPage(q) {
  const my = gen;
  page('Dead letters', h('h1', null, 'Dead letters'));
  const subs = await subscriptions();
  if (my !== gen) return;
  $('results').before(filterForm(q, subs, '/dead', false));
  poll(async (my) => {
    const list = await api(`/v1/dead?${listQuery(q)}`);
    if (my === gen) show(deadView(list, q));
  }, () => 3000);
}

// ---- one call

let open = false; // the call shown is pending or running: poll it fast

function detailView(c) {
  const src = c.source;
  const field = (label, value, testid) => [h('dt', null, label), h('dd', { testid }, value)];
  const can = (s) => s.split(' ').includes(c.status);
  const button = (action, label, cls) => h('button', { type: 'button', class: cls, 'data-action': action, 'data-id': c.id, testid: `action-${action}` }, label);
  const history = c.history || [];
  const workflow = (c.journal || []).length > 0;
  return h('div', { 'data-id': c.id },
    h('h1', null, 'Call ', h('span', { class: 'mono', testid: 'call-id' }, c.id), ' ', statusBadge(c.status, 'call-status')),
    h('div', { class: 'actions' },
      can('pending') && button('retry', 'Retry now', 'primary'),
      can('dead paused') && button('redrive', c.status === 'paused' ? 'Resume' : 'Redrive', 'primary'),
      can('succeeded dead paused cancelled') && button('restart', 'Restart', null),
      can('pending running dead paused') && button('cancel', 'Cancel', 'danger'),
      open && h('span', { class: 'muted' }, 'refreshing every second…')),
    h('div', { class: 'cols' },
      h('div', null, h('dl', { class: 'fields' },
        field('Subscription', subLink(c.subscription), 'call-subscription'),
        field('Target', h('span', { class: 'mono' }, c.target)),
        c.member && field('Held by', h('span', { class: 'mono' }, c.member), 'call-member'),
        field('Key', h('span', { class: 'mono' }, bytes(c.key)), 'call-key'),
        src && field('Source', `${src.topic} / partition ${src.partition} / offset ${src.offset}`, 'call-source'),
        src && src.timestamp != null && field('Record time', time(src.timestamp)),
        field('Created', time(c.created_at, true)),
        field('Updated', time(c.updated_at, true)),
        field('Attempts', num(c.attempts), 'call-attempts'),
        c.parent && field('Child of', [callLink(c.parent.id), ` entry #${c.parent.position}`], 'call-parent'),
        c.deployment && field('Deployment', [h('span', { class: 'mono' }, c.deployment), ' ', h('span', { class: 'muted' }, '(pinned)')], 'call-deployment'),
        // A workflow's retry budget starts again at each step it stores, as after a redrive.
        c.redriven_at != null && field(workflow ? 'Last progress' : 'Redriven', [time(c.redriven_at, true), ' ', h('span', { class: 'muted' }, `after attempt ${c.attempts_before_redrive}`)], 'call-redriven'),
        c.next_attempt_at != null && c.status === 'pending' && field('Next attempt',
          Number.isNaN(new Date(c.next_attempt_at).getTime())
            ? h('span', { class: 'muted' }, 'when what it waits for happens')
            : [time(c.next_attempt_at, true), ' ', h('span', { class: 'muted' }, `(${rel(c.next_attempt_at)})`)]),
        field(c.status === 'dead' ? 'Reason' : 'Last error', c.last_error || h('span', { class: 'muted' }, '—'), 'call-error'),
        c.headers && field('Headers', h('span', { class: 'mono' }, c.headers)))),
      h('div', null, h('h2', null, 'Payload'), preview(c.payload, 'call-payload'),
        c.output && [h('h2', null, 'Output'), preview(c.output, 'call-output')])),
    journalView(c, can('succeeded dead paused cancelled')),
    workflow && can('pending running') && signalForm(c),
    h('h2', null, `Attempts (${history.length})`),
    table('attempts', ['##', 'Started', '#Duration', 'Outcome', '#HTTP', 'Error'],
      history.map((a) => h('tr', { testid: 'attempt-row', 'data-attempt': a.attempt,
          class: !workflow && a.attempt === (c.attempts_before_redrive || 0) + 1 && c.redriven_at != null ? 'redriven' : null },
        ntd(a.attempt), td(time(a.started_at, true)), td(dur(a.duration_ms), 'num'),
        td(badge(a.outcome, `o-${a.outcome}`)), ntd(a.http_status), td(a.error || '', 'err'))),
      'No attempt yet.'));
}

// A workflow's journal: each entry, its state, what the call waits for; an ended call can
// restart from any entry.
const short = (v) => { const t = JSON.stringify(v); return t && t.length > 80 ? t.slice(0, 77) + '…' : t; };
function describeEntry(e) {
  const outcome = (ok, error, at) => error != null ? [badge('failed', 'o-permanent'), ' ', error]
    : ok !== undefined ? [badge('done', 'o-success'), at != null ? [' ', time(at, true)] : null, ' ', h('span', { class: 'mono' }, short(ok))]
      : badge('open', 's-pending');
  switch (e.kind) {
    case 'step': return [`step ${e.name}`, outcome(e.ok, e.error)];
    case 'sleep': return ['sleep', e.wake_at != null ? ['until ', time(e.wake_at, true), e.wake_at > Date.now() ? ` (${rel(e.wake_at)})` : ''] : 'wake time not set'];
    case 'now': return ['now', time(e.value, true)];
    case 'call': return [['call ', e.target, ' ', e.id ? callLink(e.id) : null], outcome(e.ok, e.error, e.at)];
    case 'signal': return [`signal ${e.name}`, outcome(e.ok, undefined, e.at)];
    case 'produce': return [`produce to ${e.topic}${e.key != null ? ` key ${e.key}` : ''}`, 'stored for publishing'];
    case 'patch': return [`patch ${e.id}`, 'taken'];
    default: return [e.kind, h('span', { class: 'mono' }, short(e))];
  }
}
// A form to send a waiting workflow a signal; the name of a signal it waits for is filled in.
function signalForm(c) {
  const waited = new Set(((c.waiting_for && c.waiting_for.any_of) || []).flat());
  const asked = (c.journal || []).find((e, i) => waited.has(i) && e.kind === 'signal' && e.at == null);
  return h('div', { class: 'filters', testid: 'signal-form' },
    h('label', null, 'Signal', h('input', { type: 'text', testid: 'signal-name', size: 18, placeholder: 'name', value: asked ? asked.name : null })),
    h('label', null, 'Payload (JSON, empty: null)', h('input', { type: 'text', testid: 'signal-payload', size: 36, placeholder: 'null' })),
    h('button', { type: 'button', 'data-action': 'send-signal', 'data-id': c.id, testid: 'send-signal' }, 'Send signal'));
}

function journalView(c, restartable) {
  const journal = c.journal || [];
  if (!journal.length) return null;
  const waited = new Set(((c.waiting_for && c.waiting_for.any_of) || []).flat());
  return [
    h('h2', null, `Journal (${journal.length})`),
    c.waiting_for && h('p', { class: 'muted', testid: 'waiting-for' }, 'Waits for ',
      c.waiting_for.any_of.map((g) => g.map((p) => `#${p}`).join(' and ')).join(', or ')),
    table('journal', ['##', 'Entry', 'State', ''],
      journal.map((e, i) => {
        const [what, state] = describeEntry(e);
        return h('tr', { testid: 'journal-row', class: waited.has(i) ? 'waited' : null },
          ntd(i), td(what), td([state, waited.has(i) ? [' ', badge('waited for', 's-running')] : null]),
          td(restartable && h('button', { type: 'button', class: 'small', 'data-action': 'restart-from', 'data-id': c.id, 'data-from': i, testid: 'restart-from',
            title: `Run again, keeping entries #0 to #${i - 1}` }, `Restart from #${i}`)));
      }), ''),
  ];
}

function detail(id) {
  page('Call');
  open = false;
  const url = `/v1/calls/${encodeURIComponent(id)}`;
  poll(async (my) => {
    const call = await api(url);
    if (my !== gen) return;
    open = call.status === 'pending' || call.status === 'running';
    show(detailView(call));
  }, () => (open ? 1000 : 5000));
}

// ---- actions (delegated clicks)

const post = (path, body) => api(path, 'POST', body);
const actions = {
  reload: () => refresh(),
  retry: (id) => act('Retry', async () => { await post(`/v1/calls/${id}/retry`); open = true; return 'The call is due now.'; }),
  redrive: (id) => act('Redrive', async () => { await post(`/v1/calls/${id}/redrive`); open = true; return `Call ${id} redriven.`; }),
  restart: (id) => confirm('Run this call again from the start?') &&
    act('Restart', async () => { await post(`/v1/calls/${id}/restart`); open = true; return `Call ${id} restarted.`; }),
  'restart-from': (id, b) => confirm(`Run this call again from journal entry #${b.dataset.from}? Later entries run again.`) &&
    act('Restart', async () => { await post(`/v1/calls/${id}/restart?from=${b.dataset.from}`); open = true; return `Call ${id} restarted from entry #${b.dataset.from}.`; }),
  'send-signal': (id) => {
    const name = view.querySelector('[data-testid="signal-name"]').value.trim();
    const text = view.querySelector('[data-testid="signal-payload"]').value.trim();
    if (!name) return flash('A signal needs a name.', 'error');
    let payload = null;
    if (text) {
      try { payload = JSON.parse(text); } catch (e) { return flash(`The payload is not JSON: ${e.message}`, 'error'); }
    }
    return act('Signal', async () => {
      await post(`/v1/calls/${id}/signals/${encodeURIComponent(name)}`, payload);
      open = true;
      return `Signal ${name} sent.`;
    });
  },
  cancel: (id) => confirm('Cancel this call for good?') &&
    act('Cancel', async () => { await post(`/v1/calls/${id}/cancel`); return 'The call was cancelled.'; }),
  'redrive-shown': () => confirm(`Redrive the ${calls(shownDead.length)} shown?`) &&
    act('Redrive', async () => `${calls((await post(`/v1/dead/redrive${shownDeadScope}`, { ids: shownDead })).redriven)} redriven.`),
  'purge-shown': () => confirm(`Delete the ${calls(shownDead.length)} shown and their history? This cannot be undone.`) &&
    act('Purge', async () => `${calls((await post(`/v1/dead/purge${shownDeadScope}`, { ids: shownDead })).purged)} purged.`),
};
view.addEventListener('click', (e) => {
  const b = e.target.closest('button[data-action]');
  if (!b || b.disabled || !actions[b.dataset.action]) return;
  actions[b.dataset.action](b.dataset.id, b);
});

// ---- routing

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function route() {
  gen++;
  clearTimeout(timer);
  refresh = () => {};
  const raw = location.hash.slice(1) || '/';
  const i = raw.indexOf('?');
  const path = i < 0 ? raw : raw.slice(0, i);
  const q = new URLSearchParams(i < 0 ? '' : raw.slice(i + 1));
  for (const a of document.querySelectorAll('[data-nav]')) {
    const nav = a.dataset.nav;
    a.classList.toggle('active', nav === path || (nav === '/calls' && path.startsWith('/calls/')));
  }
  const m = path.match(/^\/calls\/([^/]+)$/);
  const run = path === '/' ? overview
    : path === '/calls' ? () => callsPage(q)
    : path === '/dead' ? () => deadPage(q)
    : path === '/cluster' ? clusterPage
    : m ? () => detail(decodeURIComponent(m[1]))
    : () => { page('Not found'); show(h('p', null, 'No such page. ', h('a', { href: '#/' }, 'Go to the overview.'))); };
  Promise.resolve().then(run).catch((e) => {
    failed(e);
    if (e.status !== 401) show(h('p', { class: 'empty' }, e.message));
  });
}

window.addEventListener('hashchange', route);
document.addEventListener('visibilitychange', () => { if (!document.hidden) refresh(); });
route();
// Shows the Cluster page's link in cluster mode.
clusterView().catch(() => {});
