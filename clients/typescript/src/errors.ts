// Problem details (RFC 9457) as typed errors.
//
// The server answers every error with `application/problem+json` and a stable `code`. Codes are
// typed as `string` so that a code added to the server tomorrow still arrives intact; the codes
// known today are a union for autocompletion and exhaustive handling where a caller wants it.

/** Codes the server sends today (see docs/integration.md for what to do on each). */
export type KnownProblemCode =
  // request shape and identity
  | "validation_error"
  | "unauthenticated"
  | "permission_denied"
  | "not_found"
  | "conflict"
  | "idempotency_conflict"
  | "bad_request"
  | "method_not_allowed"
  | "rate_limited"
  | "internal_error"
  // usage: plan gates and declines
  | "usage_declined"
  | "insufficient_credits"
  | "cap_reached"
  | "feature_limit_reached"
  | "recording_too_long"
  | "capture_source_not_allowed"
  | "capture_source_context_mismatch"
  | "unknown_capture_source"
  | "funding_source_not_held"
  | "funding_source_not_allowed"
  | "authorization_revoked"
  | "authorization_expired"
  | "authorization_not_yet_valid"
  // recordings and holds
  | "recording_in_progress"
  | "recording_not_open"
  | "recording_already_settled"
  | "recording_expired"
  | "hold_expired"
  | "hold_managed_by_recording"
  | "hold_already_settled"
  | "capture_exceeds_hold"
  // organizations
  | "unknown_role"
  | "already_member"
  | "not_a_member"
  | "last_owner"
  | "cannot_change_own_authorization"
  | "server_already_linked"
  | "server_not_linked"
  | "authorization_exists"
  // billing
  | "unknown_plan"
  | "plan_scope_mismatch"
  | "subscription_exists"
  | "no_subscription"
  | "no_stripe_customer"
  | "plan_change_not_supported"
  | "payment_failed"
  | "payment_provider_error"
  | "invalid_threshold"
  | "unknown_pack"
  | "auto_recharge_organizations_only";

/** A problem code: one of the known ones, or any other string the server may add. */
export type ProblemCode = KnownProblemCode | (string & {});

/** Codes of a refusal for lack of money or room: the work did not happen; the attempts say why. */
export const DECLINE_CODES: ReadonlySet<string> = new Set([
  "usage_declined",
  "insufficient_credits",
  "cap_reached",
  "feature_limit_reached",
  "authorization_revoked",
  "authorization_expired",
  "authorization_not_yet_valid",
]);

/** One payer tried by the attribution engine and why it could not pay. */
export interface PayerAttempt {
  object?: string;
  funding_source: string;
  account_id: string | null;
  authorization_id: string | null;
  code: ProblemCode;
  reason: string;
}

/** One invalid field of a request. `field` is a dotted path ("seconds_by_source", "body.context"). */
export interface FieldError {
  field: string;
  message: string;
}

/** The problem document as sent, with whatever extra members the error carries. */
export interface ProblemDocument {
  type?: string;
  title?: string;
  status?: number;
  detail?: string;
  code?: string;
  instance?: string;
  [member: string]: unknown;
}

export interface ErrorContext {
  method?: string;
  path?: string;
  /** HTTP attempts made for this call (1 when the first answer was final). */
  requestAttempts?: number;
  /** The idempotency key the call was sent with, when it was a write. */
  idempotencyKey?: string;
}

/** Any error answered by Chronote Billing (or refused by this client before sending). */
export class ChronoteBillingError extends Error {
  override readonly name: string = "ChronoteBillingError";
  readonly status: number;
  readonly code: ProblemCode;
  readonly title: string;
  readonly detail: string;
  readonly type: string;
  readonly instance: string;
  /** Invalid fields: the server's `errors` list, or its single `field`. */
  readonly fields: FieldError[];
  /** Payers tried and why each could not pay (declines); empty otherwise. */
  readonly attempts: PayerAttempt[];
  /** The whole problem document, extra members included (`available`, `recording_id`...). */
  readonly problem: ProblemDocument;
  /** False when this client refused the request before sending it (same code as the server's). */
  readonly sent: boolean;
  readonly method: string | undefined;
  readonly path: string | undefined;
  readonly requestAttempts: number;
  readonly idempotencyKey: string | undefined;

  constructor(problem: ProblemDocument, status: number, context: ErrorContext = {}, sent = true) {
    const code = typeof problem.code === "string" && problem.code ? problem.code : codeOfStatus(status);
    const detail = typeof problem.detail === "string" ? problem.detail : String(problem.title ?? code);
    super(`${detail} [${code}]`);
    this.status = status;
    this.code = code;
    this.title = typeof problem.title === "string" ? problem.title : code;
    this.detail = detail;
    this.type = typeof problem.type === "string" ? problem.type : "about:blank";
    this.instance = typeof problem.instance === "string" ? problem.instance : (context.path ?? "");
    this.fields = fieldsOf(problem);
    this.attempts = Array.isArray(problem.attempts) ? (problem.attempts as PayerAttempt[]) : [];
    this.problem = problem;
    this.sent = sent;
    this.method = context.method;
    this.path = context.path;
    this.requestAttempts = context.requestAttempts ?? (sent ? 1 : 0);
    this.idempotencyKey = context.idempotencyKey;
  }

  /** True for this code (`if (err.is("insufficient_credits"))`). */
  is(code: ProblemCode): boolean {
    return this.code === code;
  }
}

/** A request the server (or this client, before sending) found invalid: see `fields`. */
export class ValidationError extends ChronoteBillingError {
  override readonly name: string = "ValidationError";
}

/**
 * No payer could cover the work, or the plan does not allow it. Nothing was held or charged.
 * `attempts` lists each payer tried and why; `gate` is true for plan limits (too long, source
 * not allowed) that more credits would not fix.
 */
export class UsageDeclinedError extends ChronoteBillingError {
  override readonly name: string = "UsageDeclinedError";
  get gate(): boolean {
    return this.status === 422;
  }
}

/** Every attempt failed on the way (network, timeout, 429/502/503/504): the outcome is unknown. */
export class ServiceUnreachableError extends Error {
  override readonly name: string = "ServiceUnreachableError";
  readonly code = "service_unreachable" as const;
  /** The last HTTP status seen (429, 502, 503, 504), or undefined after network errors only. */
  readonly lastStatus: number | undefined;
  readonly method: string;
  readonly path: string;
  readonly requestAttempts: number;
  /**
   * The key the call was sent with: retrying the same call later with this key is safe, and is
   * how to learn what the lost attempts did.
   */
  readonly idempotencyKey: string | undefined;

  constructor(
    message: string,
    context: { method: string; path: string; requestAttempts: number; idempotencyKey?: string; lastStatus?: number },
    cause?: unknown,
  ) {
    super(message, { cause });
    this.method = context.method;
    this.path = context.path;
    this.requestAttempts = context.requestAttempts;
    this.idempotencyKey = context.idempotencyKey;
    this.lastStatus = context.lastStatus;
  }
}

/** True when `error` is a problem from Chronote Billing, optionally with one of `codes`. */
export function isProblem(error: unknown, ...codes: ProblemCode[]): error is ChronoteBillingError {
  return error instanceof ChronoteBillingError && (codes.length === 0 || codes.includes(error.code));
}

/** The typed error for a problem document answered with `status`. */
export function problemError(
  problem: ProblemDocument,
  status: number,
  context: ErrorContext = {},
  sent = true,
): ChronoteBillingError {
  const code = typeof problem.code === "string" ? problem.code : "";
  // Not every 402 is a decline of usage: `payment_failed` is a card that did not pay.
  if (Array.isArray(problem.attempts) || DECLINE_CODES.has(code)) {
    return new UsageDeclinedError(problem, status, context, sent);
  }
  if (status === 422) return new ValidationError(problem, status, context, sent);
  return new ChronoteBillingError(problem, status, context, sent);
}

/** A client-side refusal with the code and shape the server would have answered. */
export function refuse(code: ProblemCode, detail: string, field: string, status = 422): ChronoteBillingError {
  const title = status === 422 ? "Invalid request" : "Permission denied";
  return problemError(
    { type: "https://billing.chronote.gg/problems/" + code, title, status, detail, code, field },
    status,
    {},
    false,
  );
}

function fieldsOf(problem: ProblemDocument): FieldError[] {
  if (Array.isArray(problem.errors)) {
    return problem.errors
      .filter((e): e is Record<string, unknown> => typeof e === "object" && e !== null)
      .map((e) => ({ field: String(e.field ?? ""), message: String(e.message ?? "") }));
  }
  if (typeof problem.field === "string") {
    return [{ field: problem.field, message: typeof problem.detail === "string" ? problem.detail : "" }];
  }
  return [];
}

const STATUS_CODES: Record<number, string> = {
  400: "bad_request",
  401: "unauthenticated",
  403: "permission_denied",
  404: "not_found",
  405: "method_not_allowed",
  409: "conflict",
  422: "validation_error",
  429: "rate_limited",
  500: "internal_error",
};

function codeOfStatus(status: number): string {
  return STATUS_CODES[status] ?? "http_error";
}
