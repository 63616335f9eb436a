// @imagen/node against a real `imagen serve`.

import assert from "node:assert/strict";
import { createServer } from "node:http";
import { after, before, test } from "node:test";

import Imagen, {
  AuthenticationError,
  BadRequestError,
  NotFoundError,
  RateLimitError,
  VERSION,
  WebhookVerificationError,
  verifyWebhook,
} from "../index.js";
import { binary, startServer } from "./server.js";

const SMALL = { model: "tiny-sd15", width: 64, height: 64, steps: 2 };
const skip = binary() ? false : "no imagen binary: set IMAGEN_BIN or build with cargo";
let server;
let client;

before(async () => {
  if (skip) return;
  server = await startServer();
  client = new Imagen({ apiKey: server.key("pro"), baseURL: server.baseURL });
});
after(() => server?.stop());

const pngSize = (b) => {
  assert.equal(b.subarray(1, 4).toString(), "PNG");
  return [b.readUInt32BE(16), b.readUInt32BE(20)];
};

test("the version matches the OpenAPI document", { skip }, async () => {
  const doc = await (await fetch(`${server.root}/openapi.json`)).json();
  assert.equal(VERSION, doc.info.version);
});

test("models and reproducible text-to-image with the rate limit", { skip }, async () => {
  const ids = (await client.models()).map((m) => m.id);
  assert.ok(ids.includes("tiny-sd15") && ids.includes("tiny-sd2"));
  const a = await client.textToImage({ prompt: "a red fox", seed: 7, response_format: "b64_json", ...SMALL });
  const b = await client.textToImage({ prompt: "a red fox", seed: 7, response_format: "b64_json", ...SMALL });
  assert.equal(a.status, "completed");
  assert.deepEqual([a.images[0].width, a.images[0].seed], [64, 7]);
  assert.equal(a.images[0].b64_json, b.images[0].b64_json);
  assert.deepEqual(pngSize(await client.download(a.images[0])), [64, 64]);
  assert.equal(a.rateLimit.limit, 100);
  assert.equal(b.rateLimit.remaining, a.rateLimit.remaining - 1);
  const c = await client.textToImage({ prompt: "a red fox", seed: 7, num_images: 2, ...SMALL });
  assert.ok(c.images[0].url);
  assert.deepEqual(await client.download(c.images[0]), await client.download(a.images[0]));
});

test("background jobs stream their progress", { skip }, async () => {
  const g = await client.textToImage({ prompt: "a lighthouse", seed: 3, background: true, ...SMALL });
  assert.equal(g.status, "processing");
  const events = [];
  for await (const ev of client.events(g.id)) events.push(ev);
  assert.equal(events.at(-1).event, "completed");
  assert.ok(events.some((e) => e.event === "progress" && e.data.total > 0));
  assert.equal(events.at(-1).data.id, g.id);
  assert.equal((await client.wait(g.id)).images[0].seed, 3);
});

test("image-to-image with a mask, variations, idempotency", { skip }, async () => {
  const init = await client.textToImage({ prompt: "a house", seed: 1, response_format: "b64_json", ...SMALL });
  const image = Buffer.from(init.images[0].b64_json, "base64");
  const out = await client.imageToImage({
    image,
    mask: image, // any image: its light pixels are repainted
    masked_content: "latent_nothing",
    prompt: "a house at night",
    seed: 2,
    response_format: "b64_json",
    ...SMALL,
  });
  assert.equal(out.status, "completed");
  assert.notEqual(out.images[0].b64_json, init.images[0].b64_json);
  const v = await client.variations({ image, num_images: 2, seed: 5, model: "tiny-sd15", extra: { steps: 2 } });
  assert.deepEqual(v.images.map((i) => i.seed), [5, 6]);
  const x = await client.textToImage({ prompt: "a cat", seed: 4, idempotencyKey: "node-sdk-1", ...SMALL });
  const y = await client.textToImage({ prompt: "a cat", seed: 4, idempotencyKey: "node-sdk-1", ...SMALL });
  assert.equal(x.id, y.id);
});

test("errors are typed", { skip }, async () => {
  await assert.rejects(client.textToImage({ prompt: "x", model: "tiny-sd15", width: 7 }), (e) => {
    assert.ok(e instanceof BadRequestError);
    assert.deepEqual([e.status, e.code, e.details.field], [400, "bad_request", "width"]);
    return true;
  });
  await assert.rejects(client.getGeneration("gen_000000000000000000000000"), NotFoundError);
  await assert.rejects(new Imagen({ apiKey: "sk-wrong", baseURL: server.baseURL }).models(), AuthenticationError);
  const free = new Imagen({ apiKey: server.key("free"), baseURL: server.baseURL });
  await assert.rejects(
    (async () => {
      for (let i = 0; i < 11; i++) await free.textToImage({ prompt: "x", seed: 1, ...SMALL });
    })(),
    (e) => e instanceof RateLimitError && e.status === 429 && e.retryAfter > 0,
  );
});

test("webhook deliveries verify", { skip }, async () => {
  const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
  let deliver;
  const delivered = new Promise((ok) => (deliver = ok));
  const hooks = createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      res.writeHead(204).end();
      deliver({ headers: req.headers, body: Buffer.concat(chunks) });
    });
  });
  await new Promise((ok) => hooks.listen(0, "127.0.0.1", ok));
  try {
    const g = await client.textToImage({
      prompt: "a boat",
      seed: 9,
      webhook_url: `http://127.0.0.1:${hooks.address().port}/hook`,
      webhook_secret: secret,
      ...SMALL,
    });
    const { headers, body } = await delivered;
    assert.equal(verifyWebhook(body, headers, secret).id, g.id);
    const own = Object.fromEntries(Object.entries(headers).filter(([k]) => !k.startsWith("webhook-")));
    assert.equal(verifyWebhook(body, own, secret).status, "completed");
    assert.throws(() => verifyWebhook(Buffer.from(body.toString().replace("completed", "failed")), headers, secret), WebhookVerificationError);
    assert.throws(() => verifyWebhook(body, headers, `whsec_${"A".repeat(32)}`), WebhookVerificationError);
    assert.throws(
      () => verifyWebhook(body, headers, secret, { now: Number(headers["webhook-timestamp"]) + 3600 }),
      /tolerance/,
    );
  } finally {
    hooks.close();
  }
});
