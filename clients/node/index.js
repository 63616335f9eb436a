// @imagen/node: a client for imagen's Image Generation API (the types are in index.d.ts).
// No dependencies: Node's own fetch, streams and crypto.

import { createHmac, timingSafeEqual } from "node:crypto";
import { readFile } from "node:fs/promises";

export const VERSION = "0.1.0";
export const DEFAULT_BASE_URL = "http://localhost:8080/v1";

/** Any error answer of the server: `{"error": {"code", "message", "details"}}`. */
export class ImagenError extends Error {
  constructor(message, { status = 0, code = "", details = {}, retryAfter = null } = {}) {
    super(message);
    this.name = new.target.name;
    this.status = status;
    this.code = code;
    this.details = details ?? {};
    this.retryAfter = retryAfter;
  }
}
export class BadRequestError extends ImagenError {}
export class AuthenticationError extends ImagenError {}
export class PermissionDeniedError extends ImagenError {}
export class NotFoundError extends ImagenError {}
export class ConflictError extends ImagenError {}
export class RateLimitError extends ImagenError {}
export class ServiceUnavailableError extends ImagenError {}
export class InternalServerError extends ImagenError {}
export class WebhookVerificationError extends Error {
  constructor(message) {
    super(message);
    this.name = "WebhookVerificationError";
  }
}

const BY_STATUS = {
  400: BadRequestError,
  401: AuthenticationError,
  403: PermissionDeniedError,
  404: NotFoundError,
  409: ConflictError,
  429: RateLimitError,
  503: ServiceUnavailableError,
};

function errorFrom(status, body, headers) {
  const e = body && typeof body === "object" && body.error && typeof body.error === "object" ? body.error : {};
  const retry = headers.get("retry-after");
  const Cls = BY_STATUS[status] ?? (status >= 500 ? InternalServerError : ImagenError);
  return new Cls(e.message ?? `HTTP ${status}`, {
    status,
    code: e.code ?? "",
    details: e.details ?? {},
    retryAfter: retry != null && !Number.isNaN(Number(retry)) ? Number(retry) : null,
  });
}

function rateLimitOf(headers) {
  const n = (k) => (headers.get(k) == null ? null : Number(headers.get(k)));
  return { limit: n("x-ratelimit-limit"), remaining: n("x-ratelimit-remaining"), reset: n("x-ratelimit-reset") };
}

/** An input image: bytes, a file path, or a string the server takes as is (base64, data URI, URL). */
async function encodeImage(image) {
  if (image instanceof Uint8Array || image instanceof ArrayBuffer) {
    return Buffer.from(image).toString("base64");
  }
  if (typeof image === "string") {
    if (/^(data:|https?:\/\/)/.test(image)) return image;
    if (image.length < 4096 && !/^[A-Za-z0-9+/=\s]{64,}$/.test(image)) {
      try {
        return (await readFile(image)).toString("base64");
      } catch {
        // not a file: base64 as given
      }
    }
    return image;
  }
  throw new TypeError("an image is a Buffer/Uint8Array, a file path, base64, a data URI or a URL");
}

async function body(params) {
  const out = {};
  const { extra, background, ...rest } = params;
  for (const [k, v] of Object.entries(rest)) {
    if (v === undefined || v === null) continue;
    if (k === "image" || k === "mask") out[k] = await encodeImage(v);
    else if (k === "loras") out[k] = v.map((l) => (Array.isArray(l) ? { name: l[0], scale: l[1] } : l));
    else out[k] = v;
  }
  if (background !== undefined) out.async = background;
  return { ...out, ...(extra ?? {}) };
}

/** Server-Sent Events from a fetch body: yields {event, id, data}. */
async function* sse(stream) {
  const decoder = new TextDecoder();
  let buf = "";
  let ev = {};
  for await (const chunk of stream) {
    buf += decoder.decode(chunk, { stream: true });
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl).replace(/\r$/, "");
      buf = buf.slice(nl + 1);
      if (line === "") {
        if (ev.data !== undefined) {
          yield { event: ev.event ?? "message", id: ev.id ?? null, data: ev.data ? JSON.parse(ev.data) : {} };
        }
        ev = {};
      } else if (!line.startsWith(":")) {
        const i = line.indexOf(":");
        const name = i < 0 ? line : line.slice(0, i);
        let value = i < 0 ? "" : line.slice(i + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (name === "data") ev.data = ev.data === undefined ? value : `${ev.data}\n${value}`;
        else if (name === "event" || name === "id") ev[name] = value;
      }
    }
  }
}

export class Imagen {
  /**
   * @param {{apiKey?: string, baseURL?: string, timeoutMs?: number, fetch?: typeof fetch}} [options]
   */
  constructor({ apiKey, baseURL, timeoutMs = 600_000, fetch: f } = {}) {
    this.apiKey = apiKey ?? process.env.IMAGEN_API_KEY;
    if (!this.apiKey) throw new ImagenError("no API key: pass apiKey or set IMAGEN_API_KEY");
    this.baseURL = (baseURL ?? process.env.IMAGEN_BASE_URL ?? DEFAULT_BASE_URL).replace(/\/+$/, "");
    this.timeoutMs = timeoutMs;
    this.fetch = f ?? globalThis.fetch;
    /** X-RateLimit-* of the latest answer. */
    this.rateLimit = null;
  }

  headers(extra = {}) {
    return { Authorization: `Bearer ${this.apiKey}`, "User-Agent": `imagen-node/${VERSION}`, ...extra };
  }

  async request(method, path, { json, headers = {}, stream = false } = {}) {
    const init = { method, headers: this.headers(headers), signal: AbortSignal.timeout(this.timeoutMs) };
    if (json !== undefined) {
      init.body = JSON.stringify(json);
      init.headers["Content-Type"] = "application/json";
    }
    let r;
    try {
      r = await this.fetch(this.baseURL + path, init);
    } catch (e) {
      throw new ImagenError(`cannot reach ${this.baseURL}: ${e.message}`);
    }
    this.rateLimit = rateLimitOf(r.headers);
    if (r.status >= 400) {
      let b = null;
      try {
        b = await r.json();
      } catch {
        // not JSON
      }
      throw errorFrom(r.status, b, r.headers);
    }
    return stream ? r : r.json();
  }

  async generation(path, params, idempotencyKey) {
    const headers = idempotencyKey ? { "Idempotency-Key": idempotencyKey } : {};
    const g = await this.request("POST", path, { json: await body(params), headers });
    return { ...g, rateLimit: this.rateLimit };
  }

  /** POST /text-to-image. `background: true` answers at once (status "processing"). */
  textToImage({ idempotencyKey, ...params }) {
    return this.generation("/text-to-image", params, idempotencyKey);
  }

  /** POST /image-to-image (with `mask`: inpainting, white = repaint). */
  imageToImage({ idempotencyKey, ...params }) {
    return this.generation("/image-to-image", params, idempotencyKey);
  }

  /** POST /variations. */
  variations({ idempotencyKey, ...params }) {
    return this.generation("/variations", params, idempotencyKey);
  }

  getGeneration(id) {
    return this.request("GET", `/generations/${encodeURIComponent(id)}`);
  }

  cancel(id) {
    return this.request("POST", `/generations/${encodeURIComponent(id)}/cancel`);
  }

  async models() {
    const b = await this.request("GET", "/models");
    return b.data ?? b.models ?? [];
  }

  /** The generation's Server-Sent Events until `completed` or `failed`. */
  async *events(id, { lastEventId } = {}) {
    const headers = lastEventId != null ? { "Last-Event-ID": String(lastEventId) } : {};
    const r = await this.request("GET", `/generations/${encodeURIComponent(id)}/events`, { headers, stream: true });
    for await (const ev of sse(r.body)) {
      yield ev;
      if (ev.event === "completed" || ev.event === "failed") return;
    }
  }

  /** Resolves when the generation ends (through its event stream). */
  async wait(id) {
    for await (const ev of this.events(id)) {
      if (ev.event === "completed" || ev.event === "failed") return ev.data;
    }
    return this.getGeneration(id);
  }

  /** The bytes of an image of a generation (its base64, or its signed link). */
  async download(image) {
    if (image.b64_json) return Buffer.from(image.b64_json, "base64");
    const r = await this.fetch(new URL(image.url, `${this.baseURL}/`), { signal: AbortSignal.timeout(this.timeoutMs) });
    if (r.status >= 400) throw errorFrom(r.status, await r.json().catch(() => null), r.headers);
    return Buffer.from(await r.arrayBuffer());
  }
}

function header(headers, name) {
  if (typeof headers.get === "function") return headers.get(name) ?? undefined;
  const k = Object.keys(headers).find((h) => h.toLowerCase() === name);
  const v = k === undefined ? undefined : headers[k];
  return Array.isArray(v) ? v[0] : v;
}

function key(secret) {
  if (secret.startsWith("whsec_")) {
    const b = Buffer.from(secret.slice(6), "base64");
    if (b.length > 0) return b;
  }
  return Buffer.from(secret);
}

const same = (a, b) => a.length === b.length && timingSafeEqual(Buffer.from(a), Buffer.from(b));

/**
 * The delivery's JSON when it is signed with `secret` (Standard Webhooks `webhook-*` headers, or
 * imagen's `X-Imagen-Signature`) and no older than `toleranceSec`; else throws
 * WebhookVerificationError. Pass the raw body, before any JSON parsing.
 */
export function verifyWebhook(payload, headers, secret, { toleranceSec = 300, now } = {}) {
  const raw = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
  const ts = header(headers, "webhook-timestamp") ?? header(headers, "x-imagen-timestamp");
  if (!ts || !/^\d+$/.test(ts)) throw new WebhookVerificationError("missing or bad timestamp header");
  const nowSec = now ?? Date.now() / 1000;
  if (Math.abs(nowSec - Number(ts)) > toleranceSec) {
    throw new WebhookVerificationError("timestamp outside the tolerance (replayed or clock skew)");
  }
  const id = header(headers, "webhook-id");
  const sigs = header(headers, "webhook-signature");
  if (id && sigs) {
    const expected = createHmac("sha256", key(secret)).update(`${id}.${ts}.`).update(raw).digest("base64");
    for (const sig of sigs.split(" ")) {
      const [version, value] = sig.split(",", 2);
      if (version === "v1" && value && same(value, expected)) return JSON.parse(raw.toString());
    }
  }
  const own = header(headers, "x-imagen-signature");
  if (own) {
    const mac = createHmac("sha256", Buffer.from(secret)).update(`${ts}.`).update(raw).digest("hex");
    if (same(own, `sha256=${mac}`)) return JSON.parse(raw.toString());
  }
  throw new WebhookVerificationError("no valid signature for this secret");
}

export default Imagen;
