// Types of @imagen/node, from imagen's OpenAPI document (GET /openapi.json).

/// <reference types="node" />

export declare const VERSION: string;
export declare const DEFAULT_BASE_URL: string;

/** Bytes, a file path, or a string the server takes as is (base64, data URI, http(s) URL). */
export type ImageInput = Uint8Array | ArrayBuffer | string;

export interface RateLimit {
  limit: number | null;
  remaining: number | null;
  /** Seconds until the window resets. */
  reset: number | null;
}

export interface GenerationParams {
  prompt: string;
  model?: string;
  negative_prompt?: string;
  /** Multiple of 8. */
  width?: number;
  height?: number;
  num_images?: number;
  steps?: number;
  guidance_scale?: number;
  scheduler?: string;
  seed?: number;
  rng?: "torch" | "philox";
  response_format?: "url" | "b64_json";
  output_format?: "png" | "jpeg" | "webp";
  /** [LoRA id, scale] pairs or {name, scale}. */
  loras?: Array<[string, number] | { name: string; scale?: number }>;
  webhook_url?: string;
  webhook_secret?: string;
  /** Answer at once with status "processing" (the API's `async`). */
  background?: boolean;
  long_prompt?: boolean;
  max_sequence_length?: number;
  true_cfg_scale?: number;
  skip_guidance_layers?: number[];
  skip_layer_guidance_scale?: number;
  skip_layer_guidance_start?: number;
  skip_layer_guidance_stop?: number;
  /** Sent as the Idempotency-Key header. */
  idempotencyKey?: string;
  /** Any other field of the API, sent as is. */
  extra?: Record<string, unknown>;
}

export interface ImageToImageParams extends GenerationParams {
  image: ImageInput;
  strength?: number;
  /** White (or transparent) = repaint. */
  mask?: ImageInput;
  masked_content?: "original" | "fill" | "latent_noise" | "latent_nothing";
}

export interface VariationsParams {
  image: ImageInput;
  prompt?: string;
  variation_strength?: number;
  num_images?: number;
  seed?: number;
  model?: string;
  response_format?: "url" | "b64_json";
  output_format?: "png" | "jpeg" | "webp";
  webhook_url?: string;
  webhook_secret?: string;
  background?: boolean;
  idempotencyKey?: string;
  extra?: Record<string, unknown>;
}

export interface GeneratedImage {
  width: number;
  height: number;
  seed: number;
  /** Signed, expiring link (response_format "url"). */
  url?: string;
  /** Base64 image (response_format "b64_json"). */
  b64_json?: string;
}

export interface Generation {
  id: string;
  status: "processing" | "completed" | "failed";
  created_at: string;
  model: string;
  prompt: string;
  images: GeneratedImage[];
  seed?: number;
  batch_size?: number;
  progress?: { step?: number; total?: number; queued?: boolean; position?: number };
  error?: { code: string; message: string };
  /** X-RateLimit-* of the answer (set by the client on POSTs). */
  rateLimit?: RateLimit;
}

export interface Model {
  id: string;
  object?: "model";
  family?: string;
  native_size?: number;
  prediction_type?: string;
  default_scheduler?: string;
  default_steps?: number;
  default_guidance_scale?: number;
  endpoints?: string[];
  format?: string;
  previews?: boolean;
  [key: string]: unknown;
}

export type GenerationEvent =
  | { event: "queued"; id: string | null; data: { position: number } }
  | { event: "progress"; id: string | null; data: { step: number; total: number; preview?: string } }
  | { event: "completed" | "failed"; id: string | null; data: Generation }
  | { event: string; id: string | null; data: Record<string, unknown> };

export interface ImagenOptions {
  /** Default: IMAGEN_API_KEY. */
  apiKey?: string;
  /** Default: IMAGEN_BASE_URL, else http://localhost:8080/v1. */
  baseURL?: string;
  timeoutMs?: number;
  fetch?: typeof fetch;
}

export declare class Imagen {
  constructor(options?: ImagenOptions);
  apiKey: string;
  baseURL: string;
  /** X-RateLimit-* of the latest answer. */
  rateLimit: RateLimit | null;
  textToImage(params: GenerationParams): Promise<Generation>;
  imageToImage(params: ImageToImageParams): Promise<Generation>;
  variations(params: VariationsParams): Promise<Generation>;
  getGeneration(id: string): Promise<Generation>;
  cancel(id: string): Promise<Generation>;
  models(): Promise<Model[]>;
  events(id: string, options?: { lastEventId?: string | number }): AsyncGenerator<GenerationEvent, void, unknown>;
  wait(id: string): Promise<Generation>;
  download(image: GeneratedImage): Promise<Buffer>;
}
export default Imagen;

export interface ErrorOptions {
  status?: number;
  code?: string;
  details?: Record<string, unknown>;
  retryAfter?: number | null;
}
export declare class ImagenError extends Error {
  constructor(message: string, options?: ErrorOptions);
  status: number;
  code: string;
  details: Record<string, unknown>;
  /** Seconds, from Retry-After (429, 503). */
  retryAfter: number | null;
}
export declare class BadRequestError extends ImagenError {}
export declare class AuthenticationError extends ImagenError {}
export declare class PermissionDeniedError extends ImagenError {}
export declare class NotFoundError extends ImagenError {}
export declare class ConflictError extends ImagenError {}
export declare class RateLimitError extends ImagenError {}
export declare class ServiceUnavailableError extends ImagenError {}
export declare class InternalServerError extends ImagenError {}
export declare class WebhookVerificationError extends Error {}

export declare function verifyWebhook(
  payload: string | Buffer,
  headers: Record<string, string | string[] | undefined> | { get(name: string): string | null },
  secret: string,
  options?: { toleranceSec?: number; now?: number },
): any;
