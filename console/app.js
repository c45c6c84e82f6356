// meterline console: plain JavaScript, no build step, no dependency.
// Every number of money arrives as a decimal string and is shown as that
// string: nothing here parses an amount into a float. Pages are built with
// DOM nodes and textContent only (no HTML from data).
'use strict';

const KEY_STORAGE = 'meterline.key';
const PAGE_INVOICES = 50;
const COMMAND_POLL_MS = 500;
const COMMAND_WAIT_MS = 60000;
const CHART_WIDTH_PX = 360;
const CHART_SCALE_DIGITS = 6;
const STATUSES = ['draft', 'pending_approval', 'approved', 'posted', 'voided'];

let me = null;

// ---- DOM helpers ---------------------------------------------------------

function h(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  setAttrs(e, attrs);
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return e;
}

function svg(tag, attrs, ...kids) {
  const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
  setAttrs(e, attrs);
  for (const kid of kids.flat()) {
    if (kid !== null && kid !== undefined) e.append(kid instanceof Node ? kid : String(kid));
  }
  return e;
}

function setAttrs(e, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
}

function table(caption, headers, rows, numeric) {
  const num = new Set(numeric || []);
  return h('table', {},
    h('caption', {}, caption),
    h('thead', {}, h('tr', {}, headers.map((t, i) => h('th', { scope: 'col', class: num.has(i) ? 'num' : null }, t)))),
    h('tbody', {}, rows.length
      ? rows.map((r) => h('tr', {}, r.map((c, i) => h('td', { class: num.has(i) ? 'num' : null }, c))))
      : h('tr', {}, h('td', { colspan: headers.length }, 'none')))
  );
}

function say(text, cls) {
  const s = document.getElementById('status');
  s.replaceChildren(h('p', { class: cls || null }, text));
}

function page(...nodes) {
  const kids = nodes.flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false);
  document.getElementById('page').replaceChildren(...kids);
}

function link(hash, text) {
  return h('a', { href: hash }, text);
}

function hashOf(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v) q.set(k, v);
  const qs = q.toString();
  return '#/' + path + (qs ? '?' + qs : '');
}

function field(label, attrs) {
  return h('label', {}, label, h('input', attrs));
}

function can(scope) {
  return !!me && (me.scopes.includes(scope) || me.scopes.includes('admin'));
}

// ---- the API -------------------------------------------------------------

async function api(method, path, body) {
  const headers = { Authorization: 'Bearer ' + (sessionStorage.getItem(KEY_STORAGE) || '') };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { detail: text }; }
  if (!r.ok) {
    const err = new Error((data && (data.detail || data.title)) || r.statusText);
    err.status = r.status;
    err.code = data && data.code;
    throw err;
  }
  return data;
}

function failed(e) {
  if (e.status === 401) {
    sessionStorage.removeItem(KEY_STORAGE);
    me = null;
    showSignin('That key was not accepted: ' + e.message);
    return;
  }
  say((e.code ? '[' + e.code + '] ' : '') + e.message, 'error');
}

// ---- sign in -------------------------------------------------------------

function showSignin(message) {
  document.getElementById('signin').hidden = false;
  document.getElementById('who').replaceChildren();
  page();
  say(message || 'Sign in with an API key.');
}

async function signedIn() {
  if (me) return true;
  if (!sessionStorage.getItem(KEY_STORAGE)) { showSignin(); return false; }
  try {
    me = await api('GET', '/v1/whoami');
  } catch (e) { failed(e); return false; }
  document.getElementById('signin').hidden = true;
  document.getElementById('who').replaceChildren(
    'Key ', h('strong', {}, me.name), ' (acts as ', me.actor, '; ', me.scopes.join(', '), ') ',
    h('button', { type: 'button', id: 'signout', onclick: () => { sessionStorage.removeItem(KEY_STORAGE); me = null; showSignin('Signed out.'); } }, 'Sign out'));
  return true;
}

// ---- Invoices ------------------------------------------------------------

async function invoicesPage(_, params) {
  const f = h('form', { class: 'inline', 'aria-label': 'Filter invoices' },
    h('label', {}, 'Status', h('select', { name: 'status' },
      h('option', { value: '' }, 'any'),
      STATUSES.map((s) => h('option', { value: s, selected: params.get('status') === s }, s)))),
    field('Customer', { name: 'customer', value: params.get('customer') || '' }),
    field('Period (YYYY-MM-DD)', { name: 'period', value: params.get('period') || '' }),
    field('Legal entity', { name: 'legal_entity', value: params.get('legal_entity') || '' }),
    h('button', { type: 'submit' }, 'Filter'));
  f.addEventListener('submit', (ev) => {
    ev.preventDefault();
    location.hash = hashOf('invoices', Object.fromEntries(new FormData(f)));
  });
  const filters = {};
  for (const k of ['status', 'customer', 'period', 'legal_entity']) if (params.get(k)) filters[k] = params.get(k);
  const q = new URLSearchParams(filters);
  q.set('limit', String(PAGE_INVOICES));
  if (params.get('after')) q.set('after', params.get('after'));
  const data = await api('GET', '/v1/invoices?' + q);
  const rows = data.invoices.map((i) => [
    link(hashOf('invoice/' + encodeURIComponent(i.invoice_id)), i.invoice_id),
    i.customer_id, i.period, i.legal_entity, h('span', { class: 'pill ' + i.status }, i.status),
    i.total, i.open, i.currency, i.holds.map((x) => x.rule).join(', ')]);
  const nav = h('p', {},
    params.get('after') ? link(hashOf('invoices', filters), 'First page') : null, ' ',
    data.next_after ? link(hashOf('invoices', { ...filters, after: data.next_after }), 'Next page') : null);
  page(h('h2', {}, 'Invoices'), f,
    table(data.matching + ' invoice(s) match; ' + rows.length + ' shown',
      ['Invoice', 'Customer', 'Period', 'Legal entity', 'Status', 'Total', 'Open', 'Currency', 'Held by'], rows, [5, 6]),
    nav);
  say('');
}

async function invoicePage(args) {
  const id = args[0];
  const inv = await api('GET', '/v1/invoices/' + encodeURIComponent(id));
  const t = inv.totals;
  page(
    h('h2', {}, 'Invoice ', h('span', { class: 'mono' }, inv.invoice_id), ' ',
      h('span', { class: 'pill ' + inv.status, id: 'invoice-status' }, inv.status)),
    h('dl', { class: 'facts' },
      h('dt', {}, 'Customer'), h('dd', {}, inv.customer.id + ' (' + inv.customer.name + ')'),
      h('dt', {}, 'Subscription'), h('dd', {}, link(hashOf('usage/' + encodeURIComponent(inv.subscription_id)), inv.subscription_id)),
      h('dt', {}, 'Service interval'), h('dd', {}, inv.service_interval.start + ' to ' + inv.service_interval.end),
      h('dt', {}, 'Legal entity'), h('dd', {}, inv.legal_entity),
      h('dt', {}, 'Version'), h('dd', {}, String(inv.version))),
    table('Held by', ['Rule', 'What it saw'], inv.holds.map((x) => [x.rule, x.detail])),
    table('Lines', ['Kind', 'Description', 'Quantity', 'Amount', 'Tax code'],
      inv.lines.map((l) => [l.kind, l.description, l.quantity, l.amount, l.tax_code || '']), [2, 3]),
    table('Totals (' + inv.currency + ')', ['Subtotal', 'Tax', 'Service credits', 'Total', 'Credited', 'Disputed', 'Open'],
      [[t.subtotal, t.tax, t.service_credits, t.total, t.credited, t.disputed, t.open]], [0, 1, 2, 3, 4, 5, 6]),
    table('Credit memos', ['Id', 'Amount', 'Tax', 'Cause', 'Actor', 'Reason', 'Time'],
      inv.credit_memos.map((c) => [c.id, c.amount, c.tax, c.cause, c.actor, c.reason, c.time]), [1, 2]),
    table('Disputes', ['Id', 'Amount', 'Status', 'Opened by', 'Reason', 'Opened'],
      inv.disputes.map((d) => [d.id, d.amount, d.status, d.opened_by, d.reason, d.opened_at]), [1]),
    can('approve') ? actions(inv) : null,
    table('History', ['Status', 'Action', 'Actor', 'Command', 'Reason', 'At'],
      inv.history.map((c) => [c.status, c.action, c.actor, c.command_id, c.reason, c.at])),
    table('Postings', ['Idempotency key'], inv.postings.map((k) => [link(hashOf('trace', { posting: k }), k)])));
  say('');
}

function actions(inv) {
  const reason = h('input', { id: 'reason', name: 'reason', required: true, size: 40 });
  const amount = h('input', { id: 'amount', name: 'amount', inputmode: 'decimal', size: 10 });
  const percent = h('input', { id: 'percent', name: 'percent', inputmode: 'decimal', size: 6 });
  const disputeId = h('select', { id: 'dispute_id' },
    inv.disputes.filter((d) => d.status === 'open').map((d) => h('option', { value: d.id }, d.id + ' (' + d.amount + ')')));
  const outcome = h('select', { id: 'outcome' }, h('option', { value: 'won' }, 'won'), h('option', { value: 'lost' }, 'lost'));
  const send = (kind, extra) => sendCommand(inv, kind, reason.value, extra);
  const button = (label, kind, extra) => h('button', { type: 'button', 'data-action': kind, onclick: () => send(kind, extra ? extra() : {}) }, label);
  return h('fieldset', { id: 'actions' }, h('legend', {}, 'Act on this invoice (signed as ' + me.actor + ')'),
    h('p', {}, h('label', { for: 'reason' }, 'Reason (kept on the history) '), reason),
    h('p', {}, button('Approve', 'approve'), ' ', button('Hold', 'hold'), ' ', button('Release', 'release'), ' ', button('Void', 'void')),
    h('p', {}, h('label', { for: 'amount' }, 'Amount ' + inv.currency + ' '), amount, ' ',
      h('label', { for: 'percent' }, 'or percent '), percent, ' ',
      button('Credit', 'credit', () => (percent.value ? { percent: percent.value } : { amount: amount.value })), ' ',
      button('Open dispute of the amount', 'dispute_open', () => ({ amount: amount.value }))),
    h('p', {}, h('label', { for: 'dispute_id' }, 'Dispute '), disputeId, ' ',
      h('label', { for: 'outcome' }, 'outcome '), outcome, ' ',
      button('Resolve dispute', 'dispute_resolve', () => ({ dispute_id: disputeId.value, outcome: outcome.value }))));
}

async function sendCommand(inv, kind, reason, extra) {
  if (!reason.trim()) { say('A reason is required.', 'error'); document.getElementById('reason').focus(); return; }
  const body = { kind, reason, ...extra };
  for (const k of Object.keys(body)) if (body[k] === '') delete body[k];
  let sent;
  try {
    sent = await api('POST', '/v1/invoices/' + encodeURIComponent(inv.invoice_id) + '/commands', body);
  } catch (e) { failed(e); return; }
  say(kind + ' sent as ' + sent.command_id + '; waiting for the invoice stage…');
  const until = Date.now() + COMMAND_WAIT_MS;
  while (Date.now() < until) {
    await new Promise((r) => setTimeout(r, COMMAND_POLL_MS));
    let st;
    try { st = await api('GET', sent.status_url); } catch (e) { failed(e); return; }
    if (st.status === 'applied') {
      await invoicePage([inv.invoice_id]);
      say(kind + ' applied: the invoice is ' + st.invoice.status + ' (version ' + st.invoice.version + '), open ' + st.invoice.open + ' ' + st.invoice.currency, 'ok');
      return;
    }
    if (st.status === 'refused') {
      say(kind + ' refused [' + st.code + '] ' + st.message, 'error');
      return;
    }
  }
  say(kind + ' ' + sent.command_id + ' sent, not applied within ' + COMMAND_WAIT_MS / 1000 + ' s: is the invoice stage running?', 'warn');
}

// ---- Exceptions ----------------------------------------------------------

async function exceptionsPage() {
  const data = await api('GET', '/v1/exceptions');
  const atRisk = (m) => Object.entries(m).map(([c, a]) => a + ' ' + c).join(', ');
  const replayCell = (from, reason) => (can('admin') ? replayButtons(from, reason) : '');
  page(h('h2', {}, 'Exceptions'),
    table('Parked events (waiting for reference data)', ['Reason', 'Events', 'Oldest parked', 'Age (s)', 'Revenue at risk', 'Unpriced', ''],
      data.parked.map((p) => [p.reason, String(p.events), p.oldest_parked_at, String(p.oldest_age_s), atRisk(p.at_risk), String(p.unpriced_events),
        replayCell('usage.exceptions', p.reason)]), [1, 3]),
    data.parked_untracked ? h('p', { class: 'warn' }, data.parked_untracked + ' parked event(s) beyond what the API keeps are not counted above.') : null,
    table('Dead letters (within retention)', ['Stage', 'Reason', 'Records', 'Oldest', 'Newest', 'Last message', ''],
      data.dead_letters.map((d) => [d.stage, d.reason, String(d.records), d.oldest_at, d.newest_at, d.last_message,
        replayCell(d.replay_from, d.reason)]), [2]),
    h('div', { id: 'replay-result', 'aria-live': 'polite' }));
  say('');
}

function replayButtons(from, reason) {
  return h('span', {},
    h('button', { type: 'button', 'data-replay': from + '/' + reason, onclick: () => replay(from, reason, true) }, 'Dry run'));
}

async function replay(from, reason, dryRun) {
  let r;
  try {
    r = await api('POST', '/v1/replay', { from, reason, dry_run: dryRun });
  } catch (e) { failed(e); return; }
  const out = document.getElementById('replay-result');
  const verb = dryRun ? 'would replay' : 'replayed';
  out.replaceChildren(h('p', { class: dryRun ? null : 'ok' },
    from + ' reason ' + reason + ': ' + verb + ' ' + r.sent + ' record(s) (read ' + r.read + ', skipped ' + r.skipped + ')'),
    dryRun && r.sent > 0 ? h('button', { type: 'button', id: 'replay-now', onclick: () => replay(from, reason, false) }, 'Replay these ' + r.sent + ' record(s)') : null);
}

// ---- Usage ---------------------------------------------------------------

async function usagePage(args) {
  const f = h('form', { class: 'inline', 'aria-label': 'Subscription' },
    field('Subscription id', { name: 'subscription', value: args[0] || '', required: true }),
    h('button', { type: 'submit' }, 'Show'));
  f.addEventListener('submit', (ev) => {
    ev.preventDefault();
    location.hash = '#/usage/' + encodeURIComponent(new FormData(f).get('subscription'));
  });
  // The form first: a subscription that does not exist leaves it to correct.
  page(h('h2', {}, 'Usage'), f);
  if (!args[0]) { say(''); return; }
  const u = await api('GET', '/v1/subscriptions/' + encodeURIComponent(args[0]) + '/usage');
  const periods = u.periods.map((p) => [
    h('h3', {}, 'Period ' + p.period.id + (p.period.end ? ' (to ' + p.period.end + ')' : '')),
    chart(p.meters.map((m) => [m.meter + (Object.keys(m.group).length ? ' ' + JSON.stringify(m.group) : ''), m.amount]), u.currency),
    table('Period to date per meter (' + u.currency + ', unrounded)', ['Meter', 'Group', 'Plan version', 'Quantity', 'Amount', 'Accrued', 'Not yet accrued', 'Events'],
      p.meters.map((m) => [m.meter, JSON.stringify(m.group), String(m.plan_version), m.quantity, m.amount, m.accrued, m.not_yet_accrued, String(m.event_count)]), [3, 4, 5, 6, 7]),
    p.adjustments.length ? table('Adjustments of closed windows', ['Kind', 'Adjusts', 'Meter', 'Amount', 'Events'],
      p.adjustments.map((a) => [a.kind, a.adjusts, a.meter || '', a.amount, String(a.event_count)]), [3, 4]) : null]);
  page(h('h2', {}, 'Usage of ', h('span', { class: 'mono' }, u.subscription_id), ' (customer ', u.customer_id, ')'), f,
    periods.length ? periods : h('p', {}, 'No open period has usage yet.'));
  say('');
}

// A decimal string as an integer of CHART_SCALE_DIGITS decimals (BigInt):
// the bars are scaled in integers, never through a float.
function scaled(dec) {
  const m = /^(-?)(\d*)(?:\.(\d*))?$/.exec(dec.trim());
  if (!m) return 0n;
  const frac = ((m[3] || '') + '0'.repeat(CHART_SCALE_DIGITS)).slice(0, CHART_SCALE_DIGITS);
  const v = BigInt((m[2] || '0') + frac);
  return m[1] ? -v : v;
}

function chart(bars, currency) {
  const rowPx = 22;
  const labelPx = 180;
  const max = bars.reduce((acc, [, v]) => { const s = scaled(v); return s > acc ? s : acc; }, 0n);
  const e = svg('svg', { class: 'chart', role: 'img', width: labelPx + CHART_WIDTH_PX + 140, height: bars.length * rowPx + 4,
    'aria-label': 'Amount per meter, ' + currency + ': ' + bars.map(([l, v]) => l + ' ' + v).join('; ') });
  bars.forEach(([label, value], i) => {
    const s = scaled(value);
    const w = max > 0n && s > 0n ? Number((s * BigInt(CHART_WIDTH_PX)) / max) : 0;
    const y = i * rowPx + 2;
    e.append(svg('text', { x: 0, y: y + 14 }, label),
      svg('rect', { x: labelPx, y, width: Math.max(w, 1), height: rowPx - 6 }),
      svg('text', { x: labelPx + w + 6, y: y + 14 }, value + ' ' + currency));
  });
  return e;
}

// ---- Trace ---------------------------------------------------------------

async function tracePage(_, params) {
  const byEvent = h('form', { class: 'inline', 'aria-label': 'Trace an event' },
    field('Event source', { name: 'source', value: params.get('source') || '', required: true }),
    field('Event id', { name: 'id', value: params.get('id') || '', required: true }),
    h('button', { type: 'submit' }, 'Trace event'));
  byEvent.addEventListener('submit', (ev) => { ev.preventDefault(); location.hash = hashOf('trace', Object.fromEntries(new FormData(byEvent))); });
  const byPosting = h('form', { class: 'inline', 'aria-label': 'Trace a posting' },
    field('Posting idempotency key', { name: 'posting', value: params.get('posting') || '', required: true, size: 70 }),
    h('button', { type: 'submit' }, 'Trace posting'));
  byPosting.addEventListener('submit', (ev) => { ev.preventDefault(); location.hash = hashOf('trace', Object.fromEntries(new FormData(byPosting))); });
  const head = [h('h2', {}, 'Trace'), byEvent, byPosting];
  page(head);
  let t = null;
  if (params.get('source') && params.get('id')) {
    t = await api('GET', '/v1/trace/event?' + new URLSearchParams({ source: params.get('source'), id: params.get('id') }));
  } else if (params.get('posting')) {
    t = await api('GET', '/v1/trace/posting?' + new URLSearchParams({ key: params.get('posting') }));
  }
  if (!t) { page(head); say(''); return; }
  page(head, t.key ? postingSources(t) : stageSteps(t), windowsTable(t, params.get('posting')),
    t.unanswered.length ? h('p', { class: 'warn' }, 'Not answered: ' + t.unanswered.join('; ')) : null);
  say(t.known ? '' : 'No stage of the instances asked knows this.', t.known ? null : 'warn');
}

function stageSteps(t) {
  const rows = [];
  for (const stage of ['validate', 'dedupe', 'enrich', 'rate', 'aggregate']) {
    const found = t.stages[stage] || [];
    const steps = found.flatMap((f) => (f.value && f.value.steps) || []);
    if (!steps.length) rows.push([stage, 'not seen', '', '', '']);
    for (const s of steps) {
      rows.push([stage, s.outcome, s.offset < 0 ? 'p' + s.partition + ' (re-emitted)' : 'p' + s.partition + '@' + s.offset, s.reason || '',
        h('code', {}, s.detail ? JSON.stringify(s.detail) : '')]);
    }
  }
  return table('Event ' + t.source + ' / ' + t.id + ' through the stages', ['Stage', 'Outcome', 'Input', 'Reason', 'Detail'], rows);
}

function postingSources(t) {
  const s = t.sources;
  return h('p', {}, 'Posting ', h('code', {}, t.key), s ? ': ' + s.event_count + ' event(s), lineage digest ' + s.lineage_digest : ': not known');
}

function windowsTable(t, marked) {
  const rows = [];
  for (const w of t.windows) {
    const name = w.window.kind + ' ' + w.window.window + (w.window.adjusts ? ' adjusting ' + w.window.adjusts : '');
    if (!w.posted.length) rows.push([name, 'open (not closed yet)', '', '', '', '', '', '']);
    for (const made of w.posted) {
      for (const p of made.postings) {
        const j = t.postings[p.idempotency_key] || {};
        const inv = (j.invoice && j.invoice.invoice_id) || made.invoice;
        const invNow = inv && t.invoices[inv];
        rows.push([name, p.posting_type + ' ' + p.kind, p.amount, p.accounting_date,
          h('code', {}, (p.idempotency_key === marked ? '* ' : '') + p.idempotency_key),
          inv ? link(hashOf('invoice/' + encodeURIComponent(inv)), inv) : '',
          invNow ? invNow.status : (j.invoice ? j.invoice.status : ''),
          j.ack ? j.ack.status + (j.ack.ledger_row_id ? ' (row ' + j.ack.ledger_row_id + ')' : '') : 'no ack yet']);
      }
    }
  }
  return table('Windows, postings, invoice and ledger', ['Window', 'Posting', 'Amount', 'Accounting date', 'Key', 'Invoice', 'Invoice status', 'Ledger'], rows, [2]);
}

// ---- Reconcile -----------------------------------------------------------

async function reconcilePage(_, params) {
  const r = await api('GET', '/v1/reconcile');
  const all = params.get('all') === '1';
  const checks = r.report.checks.filter((c) => all || !c.ok);
  const failures = r.report.checks.filter((c) => !c.ok).length;
  page(h('h2', {}, 'Reconcile'),
    h('p', { id: 'reconcile-summary', class: r.ok ? 'ok' : 'error' }, 'Last run ' + r.run_at + ': ' + (r.ok ? 'every check held' : failures + ' check(s) failed') +
      ' (' + r.report.checks.length + ' checks' + (r.ledger_checked ? ', ledger included' : '') + ').'),
    h('p', {}, all ? link(hashOf('reconcile'), 'Show failures only') : link(hashOf('reconcile', { all: '1' }), 'Show every check')),
    table(all ? 'Every check' : 'Failed checks', ['Subject', 'Check', 'Currency', 'Expected', 'Actual', 'Difference', 'OK', 'Detail'],
      checks.map((c) => [c.subject, c.check, c.currency || '', c.expected, c.actual, c.difference, c.ok ? 'yes' : 'NO', c.detail]), [3, 4, 5]),
    r.report.notes.length ? h('ul', {}, r.report.notes.map((n) => h('li', {}, n))) : null);
  say('');
}

// ---- router --------------------------------------------------------------

const PAGES = {
  invoices: invoicesPage,
  invoice: invoicePage,
  exceptions: exceptionsPage,
  usage: usagePage,
  trace: tracePage,
  reconcile: reconcilePage,
};

async function route() {
  if (!(await signedIn())) return;
  const [path, query] = (location.hash || '#/invoices').slice(1).split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  const name = PAGES[parts[0]] ? parts[0] : 'invoices';
  const navName = name === 'invoice' ? 'invoices' : name;
  for (const a of document.querySelectorAll('nav a')) {
    if (a.dataset.page === navName) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  say('Loading…');
  // Nothing of the previous page stays under this page's name if it fails.
  page(h('h2', {}, navName.charAt(0).toUpperCase() + navName.slice(1)));
  try {
    await PAGES[name](parts.slice(1), new URLSearchParams(query || ''));
    document.title = 'meterline console: ' + navName;
  } catch (e) { failed(e); }
}

document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('signin').addEventListener('submit', (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, document.getElementById('key').value.trim());
    document.getElementById('key').value = '';
    route();
  });
  window.addEventListener('hashchange', route);
  route();
});
