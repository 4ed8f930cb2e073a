// Receiving Chronote Billing's notifications (docs/notifications.md): verify `Chronote-Signature`
// over the raw body (HMAC-SHA256, Stripe's scheme, constant-time comparison, timestamp tolerance
// against replays), then parse the event into a typed union. Delivery is at least once: dedupe
// by `id`. Unknown types parse as `{ known: false }` and must still be answered 2xx.
import { createHmac, timingSafeEqual } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";

import type { PayerAttempt } from "./errors.js";

export const SIGNATURE_HEADER = "Chronote-Signature";
export const EVENT_ID_HEADER = "Chronote-Event-Id";
export const DEFAULT_TOLERANCE_SECONDS = 300;

export type WebhookErrorCode = "missing_signature" | "malformed_signature" | "stale_signature" | "invalid_signature" | "invalid_payload";

/** The request is not a genuine, fresh notification: answer 400 and store nothing. */
export class WebhookVerificationError extends Error {
  override readonly name = "WebhookVerificationError";
  constructor(
    readonly code: WebhookErrorCode,
    message: string,
  ) {
    super(message);
  }
}

type Payload = string | Uint8Array;

function bytes(payload: Payload): Buffer {
  return typeof payload === "string" ? Buffer.from(payload, "utf8") : Buffer.from(payload);
}

/** Hex HMAC-SHA256 of `"<timestamp>.<payload>"`. */
export function computeSignature(payload: Payload, secret: string, timestamp: number): string {
  return createHmac("sha256", secret)
    .update(`${Math.trunc(timestamp)}.`)
    .update(bytes(payload))
    .digest("hex");
}

/** The header value for `payload` (to sign test requests as the server does). */
export function signPayload(payload: Payload, secret: string, timestamp: number = Math.floor(Date.now() / 1000)): string {
  const t = Math.trunc(timestamp);
  return `t=${t},v1=${computeSignature(payload, secret, t)}`;
}

export interface VerifyOptions {
  /** Seconds the timestamp may be away from now (default 300); 0 turns the check off. */
  toleranceSeconds?: number;
  /** Now, in milliseconds since the epoch. */
  now?: number;
}

/**
 * Throw `WebhookVerificationError` unless `header` signs `payload` (the raw body, before any
 * JSON parsing) with one of `secrets` (several while a secret is rotated), at a time within
 * the tolerance. Several `v1=` entries may be present; one match is enough.
 */
export function verifySignature(
  payload: Payload,
  header: string | null | undefined,
  secrets: string | readonly string[],
  options: VerifyOptions = {},
): void {
  if (!header) throw new WebhookVerificationError("missing_signature", `missing ${SIGNATURE_HEADER} header`);
  const keys = (typeof secrets === "string" ? [secrets] : [...secrets]).filter((s) => s.length > 0);
  if (keys.length === 0) throw new TypeError("verifySignature needs a webhook secret");
  let timestamp: number | undefined;
  const candidates: string[] = [];
  for (const part of header.split(",")) {
    const eq = part.indexOf("=");
    if (eq === -1) continue;
    const name = part.slice(0, eq).trim();
    const value = part.slice(eq + 1).trim();
    if (name === "t") {
      if (!/^-?\d+$/.test(value)) {
        throw new WebhookVerificationError("malformed_signature", "malformed timestamp in signature header");
      }
      timestamp = Number(value);
    } else if (name === "v1") {
      candidates.push(value);
    }
  }
  if (timestamp === undefined || candidates.length === 0) {
    throw new WebhookVerificationError("malformed_signature", "signature header needs t=<timestamp> and v1=<signature>");
  }
  const tolerance = options.toleranceSeconds ?? DEFAULT_TOLERANCE_SECONDS;
  const now = (options.now ?? Date.now()) / 1000;
  if (tolerance > 0 && Math.abs(now - timestamp) > tolerance) {
    throw new WebhookVerificationError("stale_signature", `timestamp outside the ${tolerance}s tolerance`);
  }
  const given = candidates.map((c) => Buffer.from(c, "utf8"));
  for (const secret of keys) {
    const expected = Buffer.from(computeSignature(payload, secret, timestamp), "utf8");
    // Equal lengths first (the expected length is public: 64 hex digits), then constant time.
    if (given.some((g) => g.length === expected.length && timingSafeEqual(g, expected))) return;
  }
  throw new WebhookVerificationError("invalid_signature", "signature does not match the payload");
}

// ------------------------------------------------------------------ events

interface EventOf<T extends string, D> {
  known: true;
  /** `evt_...`, the same on every redelivery: dedupe by it. */
  id: string;
  type: T;
  /** When it happened, Unix seconds; deliveries may arrive out of order. */
  created: number;
  account_id: string | null;
  data: D;
}

export type WalletBalanceLowEvent = EventOf<
  "wallet.balance_low",
  {
    account_id: string;
    available_millicredits: number;
    threshold_credits: number;
    threshold_millicredits: number;
    /** 1, 2, ...: the crossing this alert is for (sent once per crossing). */
    crossing: number;
  }
>;

export type AuthorizationCapReachedEvent = EventOf<
  "authorization.cap_reached",
  {
    authorization_id: string;
    org_id: string;
    subject_type: "member" | "server";
    subject_id: string;
    /** The calendar month, YYYY-MM. */
    period: string;
    monthly_cap: number | null;
    used: number;
    held: number;
  }
>;

export type HoldDeclinedEvent = EventOf<
  "hold.declined",
  {
    /** recording, extension, chat_to_speech_message or ask_question. */
    kind: string;
    context?: "personal" | "server";
    capture_source?: string | null;
    user_id: string;
    guild_id: string | null;
    meeting_id: string | null;
    requested_minutes?: number | null;
    /** Extensions: the recording that keeps its minutes. */
    recording_id?: string;
    code: string;
    reason: string;
    attempts: PayerAttempt[];
  }
>;

export type PaymentFailedEvent = EventOf<
  "payment.failed",
  {
    invoice: string | null;
    subscription: string | null;
    amount_due: number | null;
    currency: string | null;
    attempt_count: number | null;
  }
>;

export type AutoRechargeStartedEvent = EventOf<
  "auto_recharge.started",
  {
    account_id: string;
    recharge_id: string;
    pack_id: string;
    pack_credits: number;
    amount: number;
    currency: string;
    available_millicredits: number;
    threshold_credits: number;
    threshold_millicredits: number;
  }
>;

export interface RechargePayment {
  payment_intent?: string | null;
  status?: string | null;
  granted?: boolean;
  grant_id?: string | null;
  [field: string]: unknown;
}

export type AutoRechargeSucceededEvent = EventOf<
  "auto_recharge.succeeded",
  { account_id: string; recharge_id: string; pack_id: string; payment: RechargePayment }
>;

export type AutoRechargeFailedEvent = EventOf<
  "auto_recharge.failed",
  {
    account_id: string;
    recharge_id?: string;
    pack_id: string;
    /** Stripe's decline code, auto_recharge_disabled, unknown_pack or payment_provider_unavailable. */
    reason: string;
    message?: string;
    payment?: RechargePayment;
  }
>;

export type KnownChronoteEvent =
  | WalletBalanceLowEvent
  | AuthorizationCapReachedEvent
  | HoldDeclinedEvent
  | PaymentFailedEvent
  | AutoRechargeStartedEvent
  | AutoRechargeSucceededEvent
  | AutoRechargeFailedEvent;

/** A type this client does not know yet: answer 2xx and ignore it (or log it). */
export interface UnknownChronoteEvent {
  known: false;
  id: string;
  type: string;
  created: number;
  account_id: string | null;
  data: Record<string, unknown>;
}

/** Narrow with `if (event.known) switch (event.type) { ... }`. */
export type ChronoteEvent = KnownChronoteEvent | UnknownChronoteEvent;

export const KNOWN_EVENT_TYPES: readonly KnownChronoteEvent["type"][] = [
  "wallet.balance_low",
  "authorization.cap_reached",
  "hold.declined",
  "payment.failed",
  "auto_recharge.started",
  "auto_recharge.succeeded",
  "auto_recharge.failed",
];

/** Parse a (verified) body into a typed event. Throws `WebhookVerificationError("invalid_payload")`. */
export function parseEvent(payload: Payload): ChronoteEvent {
  let document: unknown;
  try {
    document = JSON.parse(bytes(payload).toString("utf8"));
  } catch {
    throw new WebhookVerificationError("invalid_payload", "the body is not JSON");
  }
  if (typeof document !== "object" || document === null || Array.isArray(document)) {
    throw new WebhookVerificationError("invalid_payload", "the body is not a JSON object");
  }
  const d = document as Record<string, unknown>;
  if (typeof d.id !== "string" || typeof d.type !== "string" || typeof d.created !== "number") {
    throw new WebhookVerificationError("invalid_payload", "an event needs id, type and created");
  }
  const data = typeof d.data === "object" && d.data !== null && !Array.isArray(d.data) ? d.data : {};
  const account = typeof d.account_id === "string" ? d.account_id : null;
  const known = (KNOWN_EVENT_TYPES as readonly string[]).includes(d.type);
  return { known, id: d.id, type: d.type, created: d.created, account_id: account, data } as ChronoteEvent;
}

/** Verify, then parse: what a receiver does with each request. */
export function constructEvent(
  payload: Payload,
  header: string | null | undefined,
  secrets: string | readonly string[],
  options: VerifyOptions = {},
): ChronoteEvent {
  verifySignature(payload, header, secrets, options);
  return parseEvent(payload);
}

export interface WebhookHandlerOptions extends Omit<VerifyOptions, "now"> {
  secrets: string | readonly string[];
  /**
   * Store or act on the event; throw to have it sent again later. Called once per delivery:
   * the same `id` can arrive more than once, so dedupe by it (e.g. a unique key on the id).
   */
  onEvent: (event: ChronoteEvent) => void | Promise<void>;
  /** Bodies larger than this are refused (default 1 MiB). */
  maxBodyBytes?: number;
}

/**
 * A `node:http` (and Express) request handler: 400 for a body that fails verification, 500 when
 * `onEvent` throws (the event is redelivered), 204 otherwise. With Express, mount it before any
 * JSON body parser, or with `express.raw({ type: "application/json" })`: it needs the raw body.
 */
export function createWebhookHandler(options: WebhookHandlerOptions) {
  const limit = options.maxBodyBytes ?? 1024 * 1024;
  return async (req: IncomingMessage & { body?: unknown }, res: ServerResponse): Promise<void> => {
    let body: Buffer;
    try {
      body = Buffer.isBuffer(req.body) ? req.body : typeof req.body === "string" ? Buffer.from(req.body) : await readBody(req, limit);
    } catch {
      return answer(res, 413, "body too large");
    }
    const header = req.headers[SIGNATURE_HEADER.toLowerCase()];
    let event: ChronoteEvent;
    try {
      event = constructEvent(body, Array.isArray(header) ? header.join(",") : header, options.secrets, options);
    } catch (error) {
      if (error instanceof WebhookVerificationError) return answer(res, 400, error.code);
      throw error;
    }
    try {
      await options.onEvent(event);
    } catch {
      return answer(res, 500, "not stored");
    }
    answer(res, 204);
  };
}

function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        reject(new Error("too large"));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

function answer(res: ServerResponse, status: number, text?: string): void {
  res.statusCode = status;
  if (text) res.setHeader("Content-Type", "text/plain; charset=utf-8");
  res.end(text);
}
