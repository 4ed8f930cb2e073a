// One call to Chronote Billing, made safe (decision 0052): every write carries an
// Idempotency-Key chosen once per call; network failures, timeouts and 429/502/503/504 are
// retried with capped exponential backoff and jitter under that same key, honouring Retry-After;
// any other error answer becomes a typed error. The acting user and the guilds they manage are
// headers of the call, never of the client.
import { createHash, randomUUID } from "node:crypto";
import createClient, { type Client } from "openapi-fetch";

import {
  type ChronoteBillingError,
  type ProblemDocument,
  ServiceUnreachableError,
  problemError,
  refuse,
} from "./errors.js";
import type { paths } from "./generated/openapi.js";
import { checkSnowflake } from "./validate.js";

export const VERSION = "0.1.0";
/** The server keeps keys of at most this many characters. */
export const MAX_IDEMPOTENCY_KEY_LENGTH = 255;

/** Who a call is made for: the Discord user, and the guilds on which they have Manage Server. */
export interface Actor {
  /** Discord user id (a snowflake) of the person the service acts for. */
  userId: string;
  /** Guild ids where that user has Manage Server, as the caller checked with Discord. */
  manageGuilds?: readonly string[];
}

export interface RetryPolicy {
  /** Attempts in all, the first included. 1 disables retries. */
  maxAttempts: number;
  /** First backoff step; each retry doubles it, up to maxDelayMs. */
  baseDelayMs: number;
  maxDelayMs: number;
  /** A Retry-After longer than this is not waited for: the error is thrown at once. */
  maxRetryAfterMs: number;
  /** Each attempt is abandoned (and retried) after this long. */
  timeoutMs: number;
  /** Answers retried as transient. */
  retryStatuses: readonly number[];
}

export const DEFAULT_RETRY_POLICY: Readonly<RetryPolicy> = Object.freeze({
  maxAttempts: 4,
  baseDelayMs: 200,
  maxDelayMs: 5_000,
  maxRetryAfterMs: 30_000,
  timeoutMs: 10_000,
  retryStatuses: Object.freeze([429, 502, 503, 504]),
});

/** Options every call takes. */
export interface CallOptions {
  /**
   * The person the call is made for. Every /v1 call but the catalog names one; `null` only for
   * a server's auto-recorded meeting, with a key that has the `recordings:auto` scope.
   */
  as?: Actor | null;
  /**
   * Writes only: the key the server deduplicates by. Derive it from your own id (see
   * `idempotencyKey()`) so a retry after a crash is the same request; generated when omitted.
   */
  idempotencyKey?: string;
  signal?: AbortSignal;
  /** Overrides of the client's retry policy for this call. */
  retry?: Partial<RetryPolicy>;
}

/** Calls made for a person: `as` is required. */
export interface ActingCallOptions extends CallOptions {
  as: Actor;
}

/**
 * Calls on a recording: for the user who started it (for a server meeting, any user stating
 * Manage Server on its guild), or `null` for a server's auto-recorded meeting under a key with
 * the `recordings:auto` scope.
 */
export interface RecordingCallOptions extends CallOptions {
  as: Actor | null;
}

export interface TransportOptions {
  /** e.g. https://billing.chronote.gg (no trailing /v1). */
  baseUrl: string;
  /** A scoped API key, `cbk_...`. */
  apiKey: string;
  /** Defaults to the global fetch. */
  fetch?: typeof globalThis.fetch;
  retry?: Partial<RetryPolicy>;
  userAgent?: string;
  /** Waits between attempts (tests replace it). */
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  /** A number in [0, 1) for the jitter (tests replace it). */
  random?: () => number;
}

/** What one call needs to know about itself. */
export interface CallSpec extends CallOptions {
  method: string;
  path: string;
  write: boolean;
}

export interface SendInit {
  headers: Record<string, string>;
  signal: AbortSignal;
}

/** The shape openapi-fetch answers with. */
export interface SendResult<T> {
  data?: T;
  error?: unknown;
  response: Response;
}

/**
 * An idempotency key derived from your own ids, e.g. `idempotencyKey("meeting", meetingId,
 * "start")`. The same parts always give the same key; over-long keys are shortened to a hash.
 * Never put an attempt counter in a key: a retry must be the same request.
 */
export function idempotencyKey(...parts: (string | number)[]): string {
  if (parts.length === 0) throw new TypeError("idempotencyKey() needs at least one part");
  const key = parts.map((p) => String(p)).join(":");
  if (key.length <= MAX_IDEMPOTENCY_KEY_LENGTH) return key;
  return `${key.slice(0, 120)}:sha256:${createHash("sha256").update(key).digest("hex")}`;
}

/** A fresh random key, for writes that have no id of their own. */
export function randomIdempotencyKey(): string {
  return `cbc_${randomUUID()}`;
}

/**
 * The wait before retry number `retry` (1 for the first retry): "equal jitter", between half
 * and all of min(maxDelayMs, baseDelayMs * 2^(retry-1)), so clients that failed together do not
 * come back together, and none comes back at once.
 */
export function backoffDelay(retry: number, policy: RetryPolicy, random: () => number = Math.random): number {
  const step = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** Math.min(Math.max(retry - 1, 0), 30));
  return Math.round(step / 2 + (step / 2) * random());
}

/** Retry-After as milliseconds (delta-seconds or an HTTP date), or undefined when absent or unreadable. */
export function parseRetryAfter(value: string | null | undefined, now: number = Date.now()): number | undefined {
  if (value == null) return undefined;
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const at = Date.parse(text);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

function defaultSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** A failure on the way (the answer, if any, was lost): safe to retry under the same key. */
function isTransportFailure(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  if (error.name === "TimeoutError" || error.name === "AbortError") return true;
  if (error instanceof TypeError) {
    // undici: "fetch failed" (connect/reset/socket, with a cause), "terminated" (body cut off).
    return error.message === "fetch failed" || error.message === "terminated" || error.cause !== undefined;
  }
  return false;
}

export class Transport {
  readonly api: Client<paths>;
  private readonly apiKey: string;
  private readonly policy: RetryPolicy;
  private readonly userAgent: string;
  private readonly sleep: (ms: number, signal?: AbortSignal) => Promise<void>;
  private readonly random: () => number;

  constructor(options: TransportOptions) {
    if (!options.baseUrl) throw new TypeError("baseUrl is required");
    if (!options.apiKey) throw new TypeError("apiKey is required");
    this.apiKey = options.apiKey;
    this.policy = { ...DEFAULT_RETRY_POLICY, ...options.retry };
    this.userAgent = options.userAgent ?? `chronote-billing-client/${VERSION} node/${process.versions.node}`;
    this.sleep = options.sleep ?? defaultSleep;
    this.random = options.random ?? Math.random;
    const fetchImpl = options.fetch ?? globalThis.fetch;
    this.api = createClient<paths>({
      baseUrl: options.baseUrl.replace(/\/+$/, ""),
      // Late-bound so that a fetch replaced after construction (tests, instrumentation) is used.
      fetch: (request: Request) => fetchImpl(request),
    });
  }

  /** The headers of one call; refuses a bad actor or key before anything is sent. */
  headers(spec: CallSpec, key: string | undefined): Record<string, string> {
    const headers: Record<string, string> = {
      Authorization: `Bearer ${this.apiKey}`,
      "User-Agent": this.userAgent,
      Accept: "application/json, application/problem+json",
    };
    if (spec.as) {
      headers["Chronote-Acting-User"] = checkSnowflake(spec.as.userId, "Chronote-Acting-User");
      const guilds = (spec.as.manageGuilds ?? []).map((g) => checkSnowflake(g, "Chronote-Manage-Guilds"));
      if (guilds.length > 0) headers["Chronote-Manage-Guilds"] = [...new Set(guilds)].join(",");
    }
    if (key !== undefined) headers["Idempotency-Key"] = key;
    return headers;
  }

  /**
   * Run `send` until it gets a final answer. The idempotency key is fixed before the first
   * attempt and every retry repeats it, so the server applies the write at most once.
   */
  async call<T>(spec: CallSpec, send: (init: SendInit) => Promise<SendResult<T>>): Promise<T> {
    const policy: RetryPolicy = { ...this.policy, ...spec.retry };
    const key = spec.write ? this.keyOf(spec.idempotencyKey) : undefined;
    const headers = this.headers(spec, key);
    const context = { method: spec.method, path: spec.path, idempotencyKey: key };
    let lastStatus: number | undefined;
    for (let attempt = 1; ; attempt++) {
      spec.signal?.throwIfAborted();
      const timeout = new AbortController();
      const timer = setTimeout(
        () => timeout.abort(new DOMException(`no answer within ${policy.timeoutMs} ms`, "TimeoutError")),
        policy.timeoutMs,
      );
      const onCallerAbort = () => timeout.abort(spec.signal?.reason);
      spec.signal?.addEventListener("abort", onCallerAbort, { once: true });
      let wait: number | undefined;
      try {
        const result = await send({ headers, signal: timeout.signal });
        const { response } = result;
        if (response.ok) return result.data as T;
        const status = response.status;
        const document = asProblem(result.error, response);
        const retryable = policy.retryStatuses.includes(status) && attempt < policy.maxAttempts;
        const retryAfter = parseRetryAfter(response.headers.get("Retry-After"));
        if (!retryable || (retryAfter !== undefined && retryAfter > policy.maxRetryAfterMs)) {
          throw this.finalError(document, status, { ...context, requestAttempts: attempt }, policy);
        }
        lastStatus = status;
        wait = Math.max(retryAfter ?? 0, backoffDelay(attempt, policy, this.random));
      } catch (error) {
        if (spec.signal?.aborted) throw spec.signal.reason;
        // Final answers thrown above, and errors of this process, are not retried.
        if (!isTransportFailure(error)) throw error;
        if (attempt >= policy.maxAttempts) {
          throw new ServiceUnreachableError(
            `${spec.method} ${spec.path}: no answer after ${attempt} attempt(s) (${describe(error)})`,
            { ...context, requestAttempts: attempt, ...(lastStatus !== undefined ? { lastStatus } : {}) },
            error,
          );
        }
        wait = backoffDelay(attempt, policy, this.random);
      } finally {
        clearTimeout(timer);
        spec.signal?.removeEventListener("abort", onCallerAbort);
      }
      await this.sleep(wait, spec.signal);
    }
  }

  private keyOf(given: string | undefined): string {
    if (given === undefined) return randomIdempotencyKey();
    const key = given.trim();
    if (!key) throw refuse("validation_error", "Send an Idempotency-Key header with every write.", "Idempotency-Key");
    if (key.length > MAX_IDEMPOTENCY_KEY_LENGTH) {
      throw refuse(
        "validation_error",
        `Idempotency-Key is at most ${MAX_IDEMPOTENCY_KEY_LENGTH} characters.`,
        "Idempotency-Key",
      );
    }
    return key;
  }

  /** A final error answer: a problem from the server, or an unreachable service behind a gateway. */
  private finalError(
    document: ProblemDocument | undefined,
    status: number,
    context: { method: string; path: string; idempotencyKey: string | undefined; requestAttempts: number },
    policy: RetryPolicy,
  ): ChronoteBillingError | ServiceUnreachableError {
    if (document === undefined && policy.retryStatuses.includes(status)) {
      // 502/503/504 from something in front of the service: the service itself did not answer.
      return new ServiceUnreachableError(
        `${context.method} ${context.path}: HTTP ${status} after ${context.requestAttempts} attempt(s)`,
        { ...context, lastStatus: status, ...(context.idempotencyKey ? { idempotencyKey: context.idempotencyKey } : {}) },
      );
    }
    return problemError(document ?? { detail: `HTTP ${status}` }, status, context);
  }
}

/** The problem document of an error answer, or undefined when the body is not one of ours. */
function asProblem(error: unknown, response: Response): ProblemDocument | undefined {
  if (typeof error === "object" && error !== null && !Array.isArray(error)) {
    const document = error as ProblemDocument;
    if (typeof document.code === "string" || (response.headers.get("Content-Type") ?? "").includes("problem+json")) {
      return document;
    }
  }
  return undefined;
}

function describe(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const cause = error.cause as { code?: string; message?: string } | undefined;
  return cause?.code ?? cause?.message ?? error.message;
}
