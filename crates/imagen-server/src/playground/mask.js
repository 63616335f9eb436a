// imagen playground: the init image and the mask editor (loaded before playground.js, whose
// `$` and `state` these functions use when called).
'use strict';

// ---------- init image and mask editor ----------
// Both canvases are kept at the request's width × height, so what is painted is what is sent.

function targetSize() {
  const img = state.initImage;
  const pick = (field, natural) => {
    const v = Number($(field).value);
    if (Number.isInteger(v) && v >= 8 && v <= 4096) return v;
    return Math.max(8, Math.floor((natural || 512) / 8) * 8);   // the server's own default
  };
  return { w: pick('width', img && img.naturalWidth), h: pick('height', img && img.naturalHeight) };
}

function syncEditorSize() {
  const img = state.initImage;
  if (!img) return;
  const { w, h } = targetSize();
  const ic = $('image-canvas');
  const mc = $('mask-canvas');
  if (mc.width !== w || mc.height !== h) {
    // carry the painted mask over to the new size
    const old = el('canvas', { width: mc.width, height: mc.height });
    old.getContext('2d').drawImage(mc, 0, 0);
    mc.width = w; mc.height = h;
    mc.getContext('2d').drawImage(old, 0, 0, w, h);
  }
  ic.width = w; ic.height = h;
  const g = ic.getContext('2d');
  g.imageSmoothingQuality = 'high';
  g.drawImage(img, 0, 0, w, h);
}

function loadInitImage(file) {
  if (!file) return;
  const url = URL.createObjectURL(file);
  const img = new Image();
  img.onload = () => {
    if (state.initImage) URL.revokeObjectURL(state.initImage.src);
    state.initImage = img;
    $('mask-editor').classList.remove('empty');
    syncEditorSize();
    clearMask();
  };
  img.onerror = () => {
    URL.revokeObjectURL(url);
    showError('Could not read that image file.');
  };
  img.src = url;
}

function clearMask() {
  const mc = $('mask-canvas');
  mc.getContext('2d').clearRect(0, 0, mc.width, mc.height);
}

function fitSizeToImage() {
  const img = state.initImage;
  if (!img) return;
  const side = Math.max(Number($('width').value) || 0, Number($('height').value) || 0) || 512;
  const scale = side / Math.max(img.naturalWidth, img.naturalHeight);
  $('width').value = Math.max(8, Math.round((img.naturalWidth * scale) / 8) * 8);
  $('height').value = Math.max(8, Math.round((img.naturalHeight * scale) / 8) * 8);
  syncEditorSize();
}

function setupMaskPainting() {
  const mc = $('mask-canvas');
  mc.getContext('2d', { willReadFrequently: true });   // the first call fixes the context's options
  let last = null;
  const point = (ev) => {
    const r = mc.getBoundingClientRect();
    const sx = mc.width / r.width;
    return { x: (ev.clientX - r.left) * sx, y: (ev.clientY - r.top) * (mc.height / r.height), scale: sx };
  };
  const stroke = (from, to) => {
    const g = mc.getContext('2d');
    // brush size is in screen pixels, so it feels the same at any image size
    g.lineWidth = Number($('brush-size').value) * to.scale;
    g.lineCap = 'round';
    g.lineJoin = 'round';
    g.strokeStyle = g.fillStyle = '#ff0000';
    g.globalCompositeOperation = $('erase').checked ? 'destination-out' : 'source-over';
    g.beginPath();
    g.moveTo(from.x, from.y);
    g.lineTo(to.x + 0.01, to.y);   // a zero-length line draws nothing
    g.stroke();
    g.globalCompositeOperation = 'source-over';
  };
  mc.addEventListener('pointerdown', (ev) => {
    if (!state.initImage || ev.button !== 0) return;
    mc.setPointerCapture(ev.pointerId);
    last = point(ev);
    stroke(last, last);
    ev.preventDefault();
  });
  mc.addEventListener('pointermove', (ev) => {
    if (!last) return;
    const p = point(ev);
    stroke(last, p);
    last = p;
  });
  const end = () => { last = null; };
  mc.addEventListener('pointerup', end);
  mc.addEventListener('pointercancel', end);
  $('brush-size').addEventListener('input', () => { $('brush-size-value').textContent = $('brush-size').value; });
}

// The mask as an 8-bit greyscale PNG at the request size (white = repaint), or null when nothing
// is painted. Hand-encoded: a canvas PNG always has an alpha channel, and the server reads a
// mask with alpha by its transparency, not its colour.
async function maskDataUri() {
  const mc = $('mask-canvas');
  const { width: w, height: h } = mc;
  const rgba = mc.getContext('2d').getImageData(0, 0, w, h).data;
  const raw = new Uint8Array((w + 1) * h);   // each row: filter byte 0, then w grey pixels
  let painted = false;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const v = rgba[(y * w + x) * 4 + 3] >= 128 ? 255 : 0;
      raw[y * (w + 1) + 1 + x] = v;
      painted = painted || v > 0;
    }
  }
  if (!painted) return null;
  const zlib = await new Response(new Blob([raw]).stream().pipeThrough(new CompressionStream('deflate'))).arrayBuffer();
  const ihdr = new Uint8Array(13);
  new DataView(ihdr.buffer).setUint32(0, w);
  new DataView(ihdr.buffer).setUint32(4, h);
  ihdr[8] = 8;   // bit depth; colour type 0 (grey), no interlace
  const png = new Blob([new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]), pngChunk('IHDR', ihdr),
    pngChunk('IDAT', new Uint8Array(zlib)), pngChunk('IEND', new Uint8Array(0))], { type: 'image/png' });
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(png);
  });
}

const CRC_TABLE = Uint32Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function pngChunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  let c = 0xffffffff;
  for (const b of out.subarray(4, 8 + data.length)) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  dv.setUint32(8 + data.length, (c ^ 0xffffffff) >>> 0);
  return out;
}
