// imagen playground: talks to the /v1 API of the same origin. No dependencies, no build step.
'use strict';

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = 'imagen.key';

const state = {
  key: '',
  mode: 'txt2img',
  models: new Map(),   // id -> model object from GET /v1/models
  galleryNext: null,   // id for `before=` when the gallery has more
  running: null,       // {id, abort} while a generation runs
  initImage: null,     // decoded init image (HTMLImageElement)
};

// ---------- small helpers ----------

class ApiError extends Error {
  constructor(status, message, code) { super(message); this.status = status; this.code = code; }
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k in node) node[k] = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function storage(get, value) {
  // localStorage throws in some privacy modes; the page still works for the session
  try {
    if (get) return localStorage.getItem(KEY_STORAGE) || '';
    localStorage.setItem(KEY_STORAGE, value);
  } catch (_) { /* ignored */ }
  return '';
}

function showError(message) { $('error').textContent = message || ''; }

function describeError(err) {
  if (err instanceof ApiError && err.status === 401) {
    return `The server refused this API key (401): ${err.message}. Check the key and save it again.`;
  }
  if (err instanceof ApiError && err.status === 403) return `Not allowed for this key (403): ${err.message}`;
  if (err instanceof ApiError) return err.message;
  return `Network error: ${err.message || err}`;
}

function authHeaders(extra = {}) {
  return { Authorization: `Bearer ${state.key}`, ...extra };
}

// fetch + JSON with the API's error shape {"error":{"code","message"}} turned into ApiError
async function api(path, { method = 'GET', body, signal } = {}) {
  const headers = authHeaders(body ? { 'Content-Type': 'application/json' } : {});
  const res = await fetch(path, { method, headers, body, signal });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!res.ok) {
    const e = data && data.error;
    throw new ApiError(res.status, (e && e.message) || `${res.status} ${res.statusText}`, e && e.code);
  }
  return data;
}

// ---------- key, health, models ----------

function saveKey() {
  state.key = $('key').value.trim();
  storage(false, state.key);
  showError('');
  if (!state.key) { $('key-status').textContent = 'No key.'; return; }
  $('key-status').textContent = 'Saved.';
  loadAll();
}

async function checkHealth() {
  const h = $('health');
  try {
    const res = await fetch('/healthz');
    h.textContent = res.ok ? 'server up' : `server ${res.status}`;
    h.className = `health ${res.ok ? 'up' : 'down'}`;
  } catch (_) {
    h.textContent = 'server unreachable';
    h.className = 'health down';
  }
}

async function loadAll() {
  if (await loadModels()) await loadGallery(false);
}

async function loadModels() {
  try {
    const list = await api('/v1/models');
    const items = (list && list.data) || [];
    const models = items.filter((m) => m.object !== 'lora');
    const loras = items.filter((m) => m.object === 'lora');
    const modelSel = $('model');
    const previous = modelSel.value;
    state.models = new Map(models.map((m) => [m.id, m]));
    modelSel.replaceChildren(...models.map((m) =>
      el('option', { value: m.id, text: m.family ? `${m.id} (${m.family})` : m.id })));
    if (!models.length) modelSel.append(el('option', { value: '', text: 'no models installed' }));
    const loraSel = $('lora');
    const previousLora = loraSel.value;
    loraSel.replaceChildren(el('option', { value: '', text: 'none' }), ...loras.map((l) =>
      el('option', { value: l.id, text: l.base_family ? `${l.id} (${l.base_family})` : l.id })));
    if (loras.some((l) => l.id === previousLora)) loraSel.value = previousLora;
    // keep the user's choice across a reload of the list; otherwise start from the first model's defaults
    if (state.models.has(previous)) modelSel.value = previous;
    else applyModelDefaults();
    $('key-status').textContent = 'Key accepted.';
    return true;
  } catch (err) {
    $('key-status').textContent = err.status === 401 ? 'Key refused.' : '';
    showError(describeError(err));
    if (err.status === 401) {
      $('gallery').replaceChildren();
      $('load-more').hidden = true;
      $('gallery-note').textContent = 'The key was refused; no gallery.';
    }
    return false;
  }
}

function applyModelDefaults() {
  const m = state.models.get($('model').value);
  if (!m) return;
  if (m.native_size) { $('width').value = m.native_size; $('height').value = m.native_size; }
  if (m.default_steps != null) $('steps').value = m.default_steps;
  if (m.default_guidance_scale != null) $('guidance').value = m.default_guidance_scale;
  const sched = $('scheduler');
  sched.options[0].textContent = m.default_scheduler ? `model default (${m.default_scheduler})` : 'model default';
  // the model's own scheduler when the list names it, else "" (the server picks the model's)
  sched.value = [...sched.options].some((o) => o.value === m.default_scheduler) ? m.default_scheduler : '';
  syncEditorSize();
}

// ---------- mode tabs ----------

function setMode(mode) {
  state.mode = mode;
  for (const [id, m] of [['mode-txt2img', 'txt2img'], ['mode-img2img', 'img2img']]) {
    $(id).classList.toggle('active', m === mode);
    $(id).setAttribute('aria-selected', String(m === mode));
  }
  $('img2img-fields').hidden = mode !== 'img2img';
}

// ---------- building the request ----------

function numberField(body, id, name) {
  const raw = $(id).value.trim();
  if (raw !== '') body[name] = Number(raw);
}

async function buildRequest() {
  const body = { prompt: $('prompt').value };
  const negative = $('negative').value;
  if (negative.trim()) body.negative_prompt = negative;
  if ($('model').value) body.model = $('model').value;
  numberField(body, 'width', 'width');
  numberField(body, 'height', 'height');
  numberField(body, 'num-images', 'num_images');
  numberField(body, 'steps', 'steps');
  numberField(body, 'guidance', 'guidance_scale');
  if ($('scheduler').value) body.scheduler = $('scheduler').value;
  const seed = $('seed').value.trim();
  // seeds go up to 2^64: sent verbatim (below) rather than through a lossy JS number
  if (seed !== '') body.seed = /^\d+$/.test(seed) ? '__SEED__' : Number(seed);
  if ($('lora').value) {
    const scale = $('lora-scale').value.trim();
    body.loras = [{ name: $('lora').value, scale: scale === '' ? 1.0 : Number(scale) }];
  }
  body.async = true;
  let path = '/v1/text-to-image';
  if (state.mode === 'img2img') {
    if (!state.initImage) throw new Error('Choose an init image first.');
    path = '/v1/image-to-image';
    syncEditorSize();
    body.image = $('image-canvas').toDataURL('image/png');
    numberField(body, 'strength', 'strength');
    const mask = await maskDataUri();
    if (mask) body.mask = mask;
  }
  let json = JSON.stringify(body);
  if (body.seed === '__SEED__') json = json.replace('"__SEED__"', seed);
  return { path, json };
}

// ---------- running a generation ----------

function setStatus(text) { $('status').textContent = text; }

function setProgress(step, total) {
  const p = $('progress');
  p.hidden = false;
  p.max = Math.max(1, total || 1);
  p.value = Math.min(step || 0, p.max);
}

async function generate() {
  if (state.running) return;
  showError('');
  if (!state.key) { showError('Enter your API key first (top right), then save it.'); $('key').focus(); return; }
  let req;
  try { req = await buildRequest(); } catch (err) { showError(err.message); return; }

  const button = $('generate');
  button.disabled = true;
  $('cancel').hidden = false;
  $('cancel').disabled = false;
  $('preview').hidden = true;
  $('preview').removeAttribute('src');
  $('results').replaceChildren();
  setProgress(0, 1);
  setStatus('submitting…');
  const started = performance.now();
  const abort = new AbortController();
  state.running = { id: null, abort };
  try {
    const record = await api(req.path, { method: 'POST', body: req.json, signal: abort.signal });
    state.running.id = record.id;
    setStatus('queued');
    const final = record.status === 'processing' ? await follow(record.id, abort.signal) : record;
    if (final.status === 'completed') {
      setProgress(1, 1);
      $('preview').hidden = true;   // the results replace the step previews
      setStatus(`done in ${((performance.now() - started) / 1000).toFixed(1)} s`);
      showResults(final);
    } else {
      const msg = (final.error && final.error.message) || final.status || 'unknown error';
      setStatus(`failed: ${msg}`);
      showError(msg);
    }
  } catch (err) {
    if (err.name === 'AbortError') setStatus('stopped');
    else { setStatus(`failed: ${err.message || err}`); showError(describeError(err)); }
  } finally {
    state.running = null;
    button.disabled = false;
    $('cancel').hidden = true;
  }
  loadGallery(false);
}

function handleEvent(ev) {
  let data = null;
  try { data = ev.data ? JSON.parse(ev.data) : null; } catch (_) { return null; }
  if (!data) return null;
  if (ev.event === 'queued') {
    setStatus(`queued (position ${data.position})`);
  } else if (ev.event === 'progress') {
    setProgress(data.step, data.total);
    setStatus(`step ${data.step}/${data.total}`);
    if (data.preview) { $('preview').src = data.preview; $('preview').hidden = false; }
  } else if (ev.event === 'completed' || ev.event === 'failed') {
    return data;
  }
  return null;
}

// Follow the job's Server-Sent Events. EventSource cannot send the Authorization header, so
// the stream is read with fetch and parsed here; a dropped stream resumes with Last-Event-ID,
// and a server without the events route is polled instead.
async function follow(id, signal) {
  let lastId = null;
  for (let attempt = 0; attempt < 5; attempt++) {
    const headers = authHeaders({ Accept: 'text/event-stream' });
    if (lastId != null) headers['Last-Event-ID'] = lastId;
    let res;
    try {
      res = await fetch(`/v1/generations/${encodeURIComponent(id)}/events`, { headers, signal });
    } catch (err) {
      if (err.name === 'AbortError') throw err;
      await sleep(1000);
      continue;
    }
    if (!res.ok || !res.body) {
      if (res.status === 401 || res.status === 403) {
        const body = await res.json().catch(() => null);
        throw new ApiError(res.status, (body && body.error && body.error.message) || res.statusText);
      }
      break;
    }
    let final = null;
    try {
      final = await readSse(res.body, (ev) => {
        if (ev.id && ev.id !== 'done') lastId = ev.id;
        if (ev.event === 'error') return { streamError: true };
        return handleEvent(ev);
      });
    } catch (err) {
      if (err.name === 'AbortError') throw err;
    }
    if (final && !final.streamError) return final;
    if (final) break;   // the server reported a stream error: ask for the record instead
    await sleep(300);
  }
  return poll(id, signal);
}

async function readSse(body, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return null;
      // normalise line ends; a trailing \r may be the first half of \r\n
      buf = (buf + decoder.decode(value, { stream: true })).replace(/\r\n|\r(?!$)/g, '\n');
      let cut;
      while ((cut = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        const ev = parseSseBlock(block);
        const result = ev && onEvent(ev);
        if (result) return result;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function parseSseBlock(block) {
  const ev = { event: 'message', data: '', id: null };
  const data = [];
  for (const line of block.split('\n')) {
    if (!line || line.startsWith(':')) continue;   // comments keep the connection alive
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') ev.event = value;
    else if (field === 'data') data.push(value);
    else if (field === 'id') ev.id = value;
  }
  if (!data.length) return null;
  ev.data = data.join('\n');
  return ev;
}

async function poll(id, signal) {
  for (;;) {
    const rec = await api(`/v1/generations/${encodeURIComponent(id)}`, { signal });
    if (rec.status !== 'processing') return rec;
    const p = rec.progress || {};
    if (p.queued) setStatus(`queued (position ${p.position ?? '?'})`);
    else if (p.total) { setProgress(p.step, p.total); setStatus(`step ${p.step}/${p.total}`); }
    await sleep(700);
  }
}

async function cancel() {
  const run = state.running;
  if (!run) return;
  $('cancel').disabled = true;
  if (!run.id) { run.abort.abort(); return; }
  try {
    await api(`/v1/generations/${encodeURIComponent(run.id)}/cancel`, { method: 'POST' });
    setStatus('cancelling…');
  } catch (err) {
    showError(describeError(err));
  }
}

function showResults(record) {
  const results = $('results');
  results.replaceChildren(...(record.images || []).map((img, i) => {
    const src = img.url || (img.b64_json ? `data:image/png;base64,${img.b64_json}` : '');
    return el('figure', { class: 'result' },
      el('a', { href: src, target: '_blank', rel: 'noopener' },
        el('img', { class: 'result-image', src, alt: `Result ${i + 1}`, width: img.width, height: img.height })),
      el('figcaption', {},
        el('span', { text: `seed ${img.seed} · ${img.width}×${img.height}` }),
        el('a', { class: 'download', href: src, download: `${record.id}-${i}.png`, text: 'Download' })));
  }));
}

// ---------- gallery ----------

async function loadGallery(more) {
  const gallery = $('gallery');
  const note = $('gallery-note');
  const button = $('load-more');
  if (!state.key) { note.textContent = 'Save an API key to see your generations.'; return; }
  let path = '/v1/generations?limit=20';
  if (more && state.galleryNext) path += `&before=${encodeURIComponent(state.galleryNext)}`;
  button.disabled = true;
  try {
    const page = await api(path);
    const data = (page && page.data) || [];
    const cards = data.map(galleryCard);
    if (more) gallery.append(...cards); else gallery.replaceChildren(...cards);
    state.galleryNext = page.has_more && data.length ? data[data.length - 1].id : null;
    button.hidden = !state.galleryNext;
    note.textContent = gallery.children.length ? '' : 'No generations yet.';
  } catch (err) {
    button.hidden = true;
    if (!more) gallery.replaceChildren();
    // an older server has no listing route: say so quietly, the rest of the page works
    if (err.status === 404) note.textContent = 'This server does not list past generations.';
    else if (err.status === 401) note.textContent = 'The key was refused; no gallery.';
    else note.textContent = `Gallery unavailable: ${err.message}`;
  } finally {
    button.disabled = false;
  }
}

function galleryCard(rec) {
  const p = rec.parameters || {};
  const images = rec.images || [];
  const thumbs = el('div', { class: 'thumbs' });
  for (const img of images) {
    const src = img.url || '';
    thumbs.append(el('a', { href: src, target: '_blank', rel: 'noopener', title: `seed ${img.seed}` },
      el('img', { src, alt: rec.prompt || '', loading: 'lazy' })));
  }
  if (!images.length) thumbs.append(el('div', { class: 'no-image', text: rec.status === 'processing' ? '…' : 'no image' }));

  const w = p.width ?? (images[0] && images[0].width);
  const h = p.height ?? (images[0] && images[0].height);
  const seed = images[0] ? images[0].seed : (p.seed ?? rec.seed);
  const meta = [
    p.model || rec.model,
    w && h ? `${w}×${h}` : null,
    p.steps != null ? `${p.steps} steps` : null,
    seed != null ? `seed ${seed}` : null,
    p.strength != null ? `img2img ${p.strength}` : null,
    p.loras && p.loras.length ? `LoRA ${p.loras.map((l) => `${l.name}:${l.scale}`).join(', ')}` : null,
  ].filter(Boolean).join(' · ');
  const date = rec.created_at ? new Date(rec.created_at).toLocaleString() : '';

  const card = el('article', { class: 'gallery-item' },
    thumbs,
    el('div', { class: 'card-head' },
      el('span', { text: date }),
      el('span', { class: `badge status-${rec.status}`, text: rec.status })),
    el('p', { class: 'gallery-prompt', text: p.prompt ?? rec.prompt ?? '', title: p.prompt ?? rec.prompt ?? '' }),
    el('p', { class: 'gallery-meta', text: meta }),
    rec.error && rec.error.message ? el('p', { class: 'gallery-meta status-failed', text: rec.error.message }) : null);
  const reuse = el('button', { type: 'button', class: 'reuse secondary small', text: 'Reuse these settings' });
  reuse.addEventListener('click', () => reuseSettings(rec));
  card.append(reuse);
  return card;
}

function reuseSettings(rec) {
  const p = rec.parameters || {};
  const set = (id, v) => { $(id).value = v == null ? '' : String(v); };
  const model = p.model || rec.model;
  if (model && !state.models.has(model)) {
    // keep the record's model selectable even when it is no longer installed
    $('model').append(el('option', { value: model, text: `${model} (not installed)` }));
  }
  if (model) $('model').value = model;
  set('prompt', p.prompt ?? rec.prompt);
  set('negative', p.negative_prompt);
  set('width', p.width);
  set('height', p.height);
  set('steps', p.steps);
  set('guidance', p.guidance_scale);
  set('scheduler', p.scheduler || '');
  set('num-images', p.num_images ?? 1);
  const first = (rec.images || [])[0];
  set('seed', first ? first.seed : (p.seed ?? rec.seed));
  if (p.strength != null) set('strength', p.strength);
  const lora = (p.loras || [])[0];
  const loraSel = $('lora');
  loraSel.value = lora && [...loraSel.options].some((o) => o.value === lora.name) ? lora.name : '';
  set('lora-scale', lora ? lora.scale : 1.0);
  setMode('txt2img');
  showError('');
  setStatus('Settings loaded from the gallery.');
  window.scrollTo({ top: 0, behavior: 'smooth' });
  $('prompt').focus({ preventScroll: true });
}

// ---------- wiring ----------

function init() {
  setupMaskPainting();
  $('key-form').addEventListener('submit', (ev) => { ev.preventDefault(); saveKey(); });
  $('mode-txt2img').addEventListener('click', () => setMode('txt2img'));
  $('mode-img2img').addEventListener('click', () => setMode('img2img'));
  $('model').addEventListener('change', applyModelDefaults);
  $('init-image').addEventListener('change', (ev) => loadInitImage(ev.target.files[0]));
  $('clear-mask').addEventListener('click', clearMask);
  $('fit-size').addEventListener('click', fitSizeToImage);
  $('width').addEventListener('input', syncEditorSize);
  $('height').addEventListener('input', syncEditorSize);
  $('controls').addEventListener('submit', (ev) => { ev.preventDefault(); generate(); });
  $('prompt').addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); generate(); }
  });
  $('cancel').addEventListener('click', cancel);
  $('refresh-gallery').addEventListener('click', () => loadGallery(false));
  $('load-more').addEventListener('click', () => loadGallery(true));

  checkHealth();
  state.key = storage(true);
  $('key').value = state.key;
  if (state.key) loadAll();
  else {
    $('key-status').textContent = 'Enter an API key to start.';
    $('gallery-note').textContent = 'Save an API key to see your generations.';
  }
}

document.addEventListener('DOMContentLoaded', init);
