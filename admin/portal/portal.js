// authtap tenant portal. Vanilla JS, no dependencies, no third-party requests.
// Everything that comes from the API is put on the page with textContent or
// element properties, never as HTML.
'use strict';

(function () {
  const STORAGE_KEY = 'authtap-portal-token';
  const $ = (id) => document.getElementById(id);

  let token = null;     // the portal token: URL fragment → sessionStorage → memory
  let session = null;   // GET api/session
  let catalog = [];     // event types a subscriber can pick
  let editing = null;   // endpoint being edited, or null when adding
  let shown = null;     // endpoint whose deliveries are shown
  let nextBefore = '';  // cursor of the deliveries' next page

  // ---- token ---------------------------------------------------------------

  function takeToken() {
    const frag = new URLSearchParams(location.hash.slice(1));
    const t = frag.get('token');
    if (t) {
      try { sessionStorage.setItem(STORAGE_KEY, t); } catch (e) { /* storage off: keep it in memory */ }
      // Take the token out of the address bar, history and any copied link.
      history.replaceState(null, '', location.pathname + location.search);
      return t;
    }
    try { return sessionStorage.getItem(STORAGE_KEY); } catch (e) { return null; }
  }

  function dropToken() {
    token = null;
    try { sessionStorage.removeItem(STORAGE_KEY); } catch (e) { /* nothing kept */ }
  }

  // ---- API -----------------------------------------------------------------

  class APIError extends Error {
    constructor(status, code, message, field) {
      super(message);
      this.status = status;
      this.code = code;
      this.field = field;
    }
  }

  async function api(method, path, body) {
    const headers = { 'Authorization': 'Bearer ' + token, 'Accept': 'application/json' };
    const init = { method, headers, cache: 'no-store', credentials: 'omit', redirect: 'error' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch('api/' + path, init);
    } catch (e) {
      throw new APIError(0, 'network', 'The portal could not be reached: ' + e.message);
    }
    if (res.status === 204) return null;
    let data = null;
    try { data = await res.json(); } catch (e) { /* not JSON */ }
    if (!res.ok) {
      const err = (data && data.error) || {};
      const e = new APIError(res.status, err.code || 'http_' + res.status, err.message || res.statusText, err.field);
      if (res.status === 401) {
        dropToken();
        stop(e);
      }
      throw e;
    }
    return data;
  }

  // ---- messages --------------------------------------------------------------

  function say(msg) {
    $('status').textContent = msg;
  }

  function fail(e) {
    const box = $('error');
    box.textContent = '';
    const p = document.createElement('p');
    p.textContent = e.message || String(e);
    box.append(p);
    if (e.code) {
      const c = document.createElement('p');
      c.className = 'hint';
      c.textContent = 'Error code: ' + e.code + (e.field ? ' (field ' + e.field + ')' : '');
      box.append(c);
    }
    box.hidden = false;
  }

  function clearError() {
    $('error').hidden = true;
    $('error').textContent = '';
  }

  // stop shows why the link no longer works and hides everything else.
  function stop(e) {
    for (const id of ['endpoints-section', 'form-section', 'deliveries-section', 'secret-box']) $(id).hidden = true;
    const what = {
      token_expired: 'This portal link has expired.',
      token_revoked: 'This portal link was revoked.',
      token_invalid: 'This portal link is not valid.',
      token_malformed: 'This portal link is not valid.',
      token_missing: 'This page needs a portal link.',
    }[e.code] || 'This portal link does not work.';
    $('session').textContent = what + ' Ask your provider for a new one.';
    fail(e);
  }

  // ---- helpers ---------------------------------------------------------------

  function el(tag, props, ...children) {
    const n = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (k === 'dataset') Object.assign(n.dataset, v);
        else if (k === 'onclick') n.addEventListener('click', v);
        else n[k] = v;
      }
    }
    for (const c of children) n.append(c);
    return n;
  }

  function button(text, onclick, props) {
    return el('button', Object.assign({ type: 'button', textContent: text, onclick }, props || {}));
  }

  function fmtTime(s) {
    const d = new Date(s);
    return isNaN(d) ? s : d.toLocaleString();
  }

  async function busy(btn, fn) {
    clearError();
    if (btn) btn.disabled = true;
    try {
      await fn();
    } catch (e) {
      if (!(e instanceof APIError && e.status === 401)) fail(e);
    } finally {
      if (btn) btn.disabled = false;
    }
  }

  // ---- endpoints -------------------------------------------------------------

  async function loadEndpoints() {
    const data = await api('GET', 'webhooks');
    const list = $('endpoints');
    list.textContent = '';
    const eps = data.webhooks || [];
    $('endpoints-empty').hidden = eps.length > 0;
    for (const ep of eps) list.append(endpointCard(ep));
  }

  function endpointCard(ep) {
    const state = ep.enabled ? 'enabled' : 'disabled' + (ep.disabled_reason ? ': ' + ep.disabled_reason : '');
    const li = el('li', { className: 'card', dataset: { endpointId: ep.id } });
    li.append(
      el('h3', { className: 'url', textContent: ep.url }),
      el('p', { className: 'hint', textContent: ep.description || '' }),
      el('dl', null,
        el('dt', { textContent: 'Events' }), el('dd', { textContent: (ep.events && ep.events.length ? ep.events.join(', ') : 'every event type') }),
        el('dt', { textContent: 'Mode' }), el('dd', { textContent: ep.mode }),
        el('dt', { textContent: 'State' }), el('dd', { className: ep.enabled ? 'ok' : 'bad', textContent: state }),
        el('dt', { textContent: 'Id' }), el('dd', { className: 'mono', textContent: ep.id }),
      ),
    );
    const actions = el('div', { className: 'actions' });
    actions.append(button('Deliveries', () => showDeliveries(ep), { className: 'deliveries' }));
    if (!session.read_only && !ep.read_only) {
      actions.append(
        button('Send test event', (ev) => busy(ev.target, () => sendTest(ep)), { className: 'test' }),
        button('Edit', () => openForm(ep), { className: 'edit' }),
        button(ep.enabled ? 'Disable' : 'Enable', (ev) => busy(ev.target, async () => {
          await api('PATCH', 'webhooks/' + encodeURIComponent(ep.id), { enabled: !ep.enabled });
          say((ep.enabled ? 'Disabled ' : 'Enabled ') + ep.url);
          await loadEndpoints();
        }), { className: 'toggle' }),
        button('Rotate secret', (ev) => busy(ev.target, async () => {
          if (!confirm('Make a new signing secret for ' + ep.url + '? The old one keeps signing for 24 hours.')) return;
          const r = await api('POST', 'webhooks/' + encodeURIComponent(ep.id) + '/rotate-secret');
          showSecret(r);
        }), { className: 'rotate' }),
        button('Delete', (ev) => busy(ev.target, async () => {
          if (!confirm('Delete the endpoint ' + ep.url + '? It stops receiving events at once.')) return;
          await api('DELETE', 'webhooks/' + encodeURIComponent(ep.id));
          if (shown && shown.id === ep.id) closeDeliveries();
          say('Deleted ' + ep.url);
          await loadEndpoints();
        }), { className: 'delete danger' }),
      );
    } else if (ep.read_only) {
      actions.append(el('span', { className: 'hint', textContent: 'Managed by your provider' }));
    }
    li.append(actions);
    return li;
  }

  async function sendTest(ep) {
    const r = await api('POST', 'webhooks/' + encodeURIComponent(ep.id) + '/test');
    say('Test event ' + r.event_id + ' sent to ' + ep.url + '.');
    await showDeliveries(ep);
    refreshSoon(ep, [700, 1500, 3000]);
  }

  // refreshSoon reloads the deliveries of ep after each wait (ms), while they are shown:
  // a delivery takes a moment.
  function refreshSoon(ep, waits) {
    let i = 0;
    const next = () => {
      if (i >= waits.length) return;
      setTimeout(() => {
        if (!shown || shown.id !== ep.id) return;
        busy(null, () => loadDeliveries(false)).then(next);
      }, waits[i++]);
    };
    next();
  }

  function showSecret(r) {
    $('secret-endpoint').textContent = r.url;
    $('secret-value').value = r.secret;
    $('secret-box').hidden = false;
    $('secret-value').focus();
    $('secret-value').select();
  }

  // ---- the endpoint form -----------------------------------------------------

  function eventChoices() {
    const seen = new Set();
    const out = [];
    for (const t of catalog) {
      if (t.templated) continue; // the types it renders to are listed on their own
      if (seen.has(t.type)) continue;
      seen.add(t.type);
      out.push(t);
    }
    return out;
  }

  function renderEventList(selected) {
    const box = $('f-event-list');
    box.textContent = '';
    const choices = eventChoices();
    const known = new Set(choices.map((t) => t.type));
    // Filters set elsewhere (patterns such as user.*) stay as they are.
    const extra = (selected || []).filter((f) => !known.has(f));
    choices.forEach((t, i) => {
      const id = 'f-ev-' + i;
      const input = el('input', { type: 'checkbox', id, value: t.type, checked: (selected || []).includes(t.type) });
      const row = el('div', { className: 'event-type' },
        input,
        el('label', { htmlFor: id }, el('span', { className: 'mono', textContent: t.type })),
      );
      if (t.description) row.append(el('p', { className: 'hint', textContent: t.description }));
      if (t.examples && t.examples.length) {
        const pre = el('pre', { className: 'example', tabIndex: 0 });
        try {
          pre.textContent = JSON.stringify(t.examples[0], null, 2);
        } catch (e) {
          pre.textContent = String(t.examples[0]);
        }
        row.append(el('details', null, el('summary', { textContent: 'Example payload' }), pre));
      }
      box.append(row);
    });
    extra.forEach((f, i) => {
      const id = 'f-ev-x' + i;
      box.append(el('div', { className: 'event-type' },
        el('input', { type: 'checkbox', id, value: f, checked: true }),
        el('label', { htmlFor: id }, el('span', { className: 'mono', textContent: f }))));
    });
    if (!choices.length && !extra.length) box.append(el('p', { className: 'hint', textContent: 'No event types are published yet.' }));
  }

  function openForm(ep) {
    editing = ep || null;
    clearError();
    $('form-title').textContent = ep ? 'Edit endpoint' : 'Add endpoint';
    $('f-submit').textContent = ep ? 'Save changes' : 'Create endpoint';
    $('f-url').value = ep ? ep.url : '';
    $('f-description').value = ep ? (ep.description || '') : '';
    $('f-mode-row').hidden = !session.allow_test_endpoints;
    $('f-mode').value = ep ? ep.mode : (session.allow_test_endpoints ? 'test' : 'live');
    renderEventList(ep ? ep.events : []);
    $('form-section').hidden = false;
    $('f-url').focus();
  }

  function closeForm() {
    $('form-section').hidden = true;
    editing = null;
    $('add-endpoint').focus();
  }

  async function submitForm(ev) {
    ev.preventDefault();
    const url = $('f-url').value.trim();
    if (!url) {
      fail(new APIError(400, 'invalid_field', 'url: enter the URL that receives the events', 'url'));
      $('f-url').focus();
      return;
    }
    const events = Array.from($('f-event-list').querySelectorAll('input[type=checkbox]:checked'), (c) => c.value);
    const body = { url, description: $('f-description').value.trim(), events };
    if (session.allow_test_endpoints) body.mode = $('f-mode').value;
    await busy($('f-submit'), async () => {
      if (editing) {
        await api('PATCH', 'webhooks/' + encodeURIComponent(editing.id), body);
        say('Saved ' + url);
      } else {
        const r = await api('POST', 'webhooks', body);
        say('Created ' + r.url);
        showSecret(r);
      }
      $('form-section').hidden = true;
      editing = null;
      await loadEndpoints();
    });
  }

  // ---- deliveries ------------------------------------------------------------

  async function showDeliveries(ep) {
    shown = ep;
    $('deliveries-endpoint').textContent = ep.url;
    $('deliveries-section').hidden = false;
    $('r-submit').disabled = !!session.read_only || !!ep.read_only;
    await loadDeliveries(false);
    $('deliveries-title').focus();
  }

  function closeDeliveries() {
    shown = null;
    $('deliveries-section').hidden = true;
  }

  async function loadDeliveries(more) {
    if (!shown) return;
    let path = 'webhooks/' + encodeURIComponent(shown.id) + '/deliveries?limit=50';
    if (more && nextBefore) path += '&before=' + encodeURIComponent(nextBefore);
    const data = await api('GET', path);
    const body = $('deliveries').tBodies[0];
    if (!more) body.textContent = '';
    for (const d of data.deliveries || []) body.append(deliveryRow(d));
    nextBefore = data.next_before || '';
    $('d-more').hidden = !nextBefore;
    $('deliveries-empty').hidden = body.rows.length > 0;
    $('deliveries').hidden = body.rows.length === 0;
  }

  function deliveryRow(d) {
    const result = d.success ? 'delivered' : 'failed';
    const statusText = (d.status ? 'HTTP ' + d.status : 'no response') + ' · ' + result;
    const response = el('td', { dataset: { label: 'Response' } });
    const text = d.error ? d.error : d.response;
    if (text) {
      response.append(el('details', null, el('summary', { textContent: d.error ? 'Error' : 'Body' }),
        el('pre', { className: 'excerpt', textContent: text })));
    }
    const actions = el('td', { dataset: { label: '' } });
    if (!session.read_only && !(shown && shown.read_only)) {
      actions.append(button('Retry', (ev) => busy(ev.target, async () => {
        const r = await api('POST', 'deliveries/' + encodeURIComponent(d.delivery_id) + '/retry');
        say('Delivery ' + r.delivery_id + ' ' + r.action + '.');
        refreshSoon(shown, [700, 2000]);
      }), { className: 'retry' }));
    }
    const tr = el('tr', { className: d.success ? 'ok' : 'bad', dataset: { deliveryId: d.delivery_id, eventId: d.event_id } },
      el('td', { dataset: { label: 'Time' }, textContent: fmtTime(d.time) }),
      el('td', { dataset: { label: 'Event' } },
        el('span', { className: 'mono', textContent: d.event_type }), el('br'),
        el('span', { className: 'mono hint', textContent: d.event_id + (d.replay ? ' (replay)' : '') })),
      el('td', { dataset: { label: 'Attempt' }, textContent: String(d.attempt) }),
      el('td', { className: 'result', dataset: { label: 'Result' }, textContent: statusText }),
      el('td', { dataset: { label: 'Latency' }, textContent: Math.round(d.latency_ms) + ' ms' }),
      response,
      actions,
    );
    return tr;
  }

  async function submitReplay(ev) {
    ev.preventDefault();
    if (!shown) return;
    const since = $('r-since').value;
    const until = $('r-until').value;
    if (!since) {
      fail(new APIError(400, 'invalid_parameter', 'since: choose where the window starts', 'since'));
      $('r-since').focus();
      return;
    }
    let q = 'since=' + encodeURIComponent(new Date(since).toISOString());
    if (until) q += '&until=' + encodeURIComponent(new Date(until).toISOString());
    await busy($('r-submit'), async () => {
      const r = await api('POST', 'webhooks/' + encodeURIComponent(shown.id) + '/replay?' + q);
      say('Replaying ' + r.replayed + (r.replayed === 1 ? ' event' : ' events') + ' to ' + shown.url + '.');
      refreshSoon(shown, [700, 2000]);
    });
  }

  // ---- start -----------------------------------------------------------------

  async function start() {
    $('add-endpoint').addEventListener('click', () => openForm(null));
    $('reload').addEventListener('click', (ev) => busy(ev.target, loadEndpoints));
    $('f-cancel').addEventListener('click', closeForm);
    $('endpoint-form').addEventListener('submit', submitForm);
    $('d-refresh').addEventListener('click', (ev) => busy(ev.target, () => loadDeliveries(false)));
    $('d-more').addEventListener('click', (ev) => busy(ev.target, () => loadDeliveries(true)));
    $('d-close').addEventListener('click', closeDeliveries);
    $('replay-form').addEventListener('submit', submitReplay);
    $('secret-copy').addEventListener('click', async () => {
      const v = $('secret-value');
      v.select();
      try {
        await navigator.clipboard.writeText(v.value);
        say('Secret copied.');
      } catch (e) {
        say('Press Ctrl+C (⌘C) to copy the selected secret.');
      }
    });
    $('secret-done').addEventListener('click', () => {
      $('secret-value').value = '';
      $('secret-box').hidden = true;
      $('add-endpoint').focus();
    });

    token = takeToken();
    if (!token) {
      stop(new APIError(401, 'token_missing', 'Open this page with the portal link you were given (it ends in #token=…).'));
      return;
    }
    await busy(null, async () => {
      session = await api('GET', 'session');
      const until = fmtTime(session.expires_at);
      $('session').textContent = 'Tenant ' + session.tenant + (session.read_only ? ' · read-only' : '') + ' · link valid until ' + until;
      $('add-endpoint').hidden = !!session.read_only;
      $('replay-form').hidden = !!session.read_only;
      $('endpoints-section').hidden = false;
      const types = await api('GET', 'event-types');
      catalog = types.event_types || [];
      await loadEndpoints();
      document.body.dataset.ready = 'true';
    });
  }

  // A new link opened in the same tab changes only the fragment: start over with it.
  window.addEventListener('hashchange', () => {
    if (new URLSearchParams(location.hash.slice(1)).get('token')) location.reload();
  });

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
