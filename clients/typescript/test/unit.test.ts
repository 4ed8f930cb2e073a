// Pure parts: backoff and Retry-After, key derivation, client-side checks, problem parsing
// (a code the client does not know yet arrives intact), webhook signature edge cases, and the
// coverage of every /v1 operation of the generated types by the client.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";

import {
  ChronoteBillingClient,
  ChronoteBillingError,
  DEFAULT_RETRY_POLICY,
  ServiceUnreachableError,
  UsageDeclinedError,
  ValidationError,
  WebhookVerificationError,
  backoffDelay,
  checkRecordingStart,
  checkSecondsBySource,
  checkSnowflake,
  idempotencyKey,
  parseEvent,
  parseRetryAfter,
  signPayload,
  verifySignature,
} from "../src/index.js";
import { packageDir } from "./support/server.js";

describe("backoff", () => {
  test("doubles from the base, capped, with equal jitter", () => {
    const policy = { ...DEFAULT_RETRY_POLICY, baseDelayMs: 200, maxDelayMs: 1_000 };
    assert.equal(backoffDelay(1, policy, () => 0), 100);
    assert.equal(backoffDelay(1, policy, () => 0.999999), 200);
    assert.equal(backoffDelay(2, policy, () => 0), 200);
    assert.equal(backoffDelay(3, policy, () => 0.5), 600);
    assert.equal(backoffDelay(10, policy, () => 0), 500);
    assert.equal(backoffDelay(10, policy, () => 0.999999), 1_000);
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(2, policy);
      assert.ok(d >= 200 && d <= 400, String(d));
    }
  });

  test("Retry-After in seconds or as a date", () => {
    assert.equal(parseRetryAfter("3"), 3_000);
    assert.equal(parseRetryAfter(" 0 "), 0);
    const now = Date.parse("2026-12-05T10:00:00Z");
    assert.equal(parseRetryAfter("Sat, 05 Dec 2026 10:00:30 GMT", now), 30_000);
    assert.equal(parseRetryAfter("Sat, 05 Dec 2026 09:00:00 GMT", now), 0);
    assert.equal(parseRetryAfter("soon"), undefined);
    assert.equal(parseRetryAfter(null), undefined);
  });
});

describe("idempotency keys", () => {
  test("derived keys are stable; long ones are hashed within the server's limit", () => {
    assert.equal(idempotencyKey("meeting", "m-1", "start"), "meeting:m-1:start");
    assert.equal(idempotencyKey("recording", "rec_1", "extend", "30+15"), "recording:rec_1:extend:30+15");
    const long = idempotencyKey("meeting", "x".repeat(400), "start");
    assert.ok(long.length <= 255);
    assert.equal(long, idempotencyKey("meeting", "x".repeat(400), "start"));
    assert.notEqual(long, idempotencyKey("meeting", "x".repeat(401), "start"));
    assert.throws(() => idempotencyKey());
  });

  test("a blank or over-long key given by the caller is refused before sending", async () => {
    let calls = 0;
    const client = new ChronoteBillingClient({
      baseUrl: "http://127.0.0.1:9",
      apiKey: "cbk_test",
      fetch: async () => {
        calls += 1;
        return new Response("{}");
      },
    });
    const as = { userId: "123456789012345678" };
    for (const key of ["  ", "k".repeat(256)]) {
      await assert.rejects(client.recordings.cancel("rec_1", { as, idempotencyKey: key }), (e: unknown) => {
        assert.ok(e instanceof ValidationError);
        assert.equal(e.fields[0]?.field, "Idempotency-Key");
        return true;
      });
    }
    await assert.rejects(
      client.recordings.cancel("rec_1", { as: { userId: "1", manageGuilds: [] } }),
      (e: unknown) => e instanceof ValidationError && e.fields[0]?.field === "Chronote-Acting-User",
    );
    await assert.rejects(
      client.recordings.cancel("rec_1", { as: { ...as, manageGuilds: ["guild"] } }),
      (e: unknown) => e instanceof ValidationError && e.fields[0]?.field === "Chronote-Manage-Guilds",
    );
    assert.equal(calls, 0);
  });
});

describe("client-side checks", () => {
  test("snowflakes are trimmed digits, 15 to 21 of them", () => {
    assert.equal(checkSnowflake(" 123456789012345678 ", "user_id"), "123456789012345678");
    assert.throws(() => checkSnowflake("12345", "user_id"), ValidationError);
    assert.throws(() => checkSnowflake("1234567890123456789012", "user_id"), ValidationError);
    assert.throws(() => checkSnowflake("12345678901234567a", "user_id"), ValidationError);
  });

  test("minutes and seconds are whole numbers", () => {
    const base = { context: "personal", capture_source: "desktop" };
    for (const minutes of [0, -1, 1.5, Number.NaN]) {
      assert.throws(() => checkRecordingStart({ ...base, requested_minutes: minutes }), (e: unknown) => {
        return e instanceof ValidationError && e.code === "validation_error" && e.fields[0]?.field === "requested_minutes";
      });
    }
    assert.throws(() => checkRecordingStart({ ...base, requested_minutes: 1441 }), (e: unknown) => {
      return e instanceof ValidationError && e.code === "validation_error";
    });
    assert.doesNotThrow(() => checkRecordingStart({ ...base, requested_minutes: 1440 }));
    assert.deepEqual(checkSecondsBySource({ mic: 0, system: 86_400 }), { mic: 0, system: 86_400 });
    assert.throws(() => checkSecondsBySource({ mic: 1.5 }), ValidationError);
    assert.throws(() => checkSecondsBySource({ "": 1 }), ValidationError);
    assert.throws(() => checkSecondsBySource([]), ValidationError);
  });
});

/** A client whose fetch answers what the test says (parsing only; the servers are real elsewhere). */
function answering(...answers: (() => Response)[]): ChronoteBillingClient {
  let i = 0;
  return new ChronoteBillingClient({
    baseUrl: "http://127.0.0.1:9",
    apiKey: "cbk_test",
    retry: { baseDelayMs: 1, maxDelayMs: 2 },
    fetch: async () => {
      const next = answers[Math.min(i, answers.length - 1)];
      i += 1;
      if (!next) throw new Error("no answer");
      return next();
    },
  });
}

function problem(status: number, body: Record<string, unknown>): Response {
  return new Response(JSON.stringify({ type: "about:blank", title: "t", status, detail: "d", instance: "/x", ...body }), {
    status,
    headers: { "Content-Type": "application/problem+json" },
  });
}

describe("problems", () => {
  test("a code this client does not know arrives intact, with its extra members", async () => {
    const client = answering(() => problem(409, { code: "meeting_on_fire", temperature: 451 }));
    await assert.rejects(client.billing.catalog(), (e: unknown) => {
      assert.ok(e instanceof ChronoteBillingError);
      assert.equal(e.code, "meeting_on_fire");
      assert.equal(e.status, 409);
      assert.equal(e.problem.temperature, 451);
      assert.equal(e.requestAttempts, 1);
      return true;
    });
  });

  test("a recording_already_settled answer is a plain conflict, not retried", async () => {
    let calls = 0;
    const client = answering(() => {
      calls += 1;
      return problem(409, { code: "recording_already_settled", recording_id: "rec_1" });
    });
    await assert.rejects(
      client.recordings.finish("rec_1", { seconds_by_source: { mic: 60 } }, { as: { userId: "123456789012345678" } }),
      (e: unknown) => e instanceof ChronoteBillingError && e.code === "recording_already_settled" && !(e instanceof UsageDeclinedError),
    );
    assert.equal(calls, 1);
  });

  test("a 402 of a known decline code is a decline, a payment_failed is not; a 422 with errors lists its fields", async () => {
    await assert.rejects(
      answering(() => problem(402, { code: "insufficient_credits", available: 5 })).billing.catalog(),
      (e: unknown) => e instanceof UsageDeclinedError && e.attempts.length === 0 && e.problem.available === 5,
    );
    await assert.rejects(
      answering(() => problem(402, { code: "payment_failed" })).billing.catalog(),
      (e: unknown) => e instanceof ChronoteBillingError && !(e instanceof UsageDeclinedError) && e.code === "payment_failed",
    );
    await assert.rejects(
      answering(() =>
        problem(422, {
          code: "validation_error",
          errors: [
            { field: "name", message: "too short" },
            { field: "role", message: "unknown" },
          ],
        }),
      ).billing.catalog(),
      (e: unknown) => e instanceof ValidationError && e.fields.map((f) => f.field).join() === "name,role",
    );
  });

  test("a gateway's 502 page after every retry is an unreachable service", async () => {
    let calls = 0;
    const client = answering(() => {
      calls += 1;
      return new Response("<html>Bad Gateway</html>", { status: 502, headers: { "Content-Type": "text/html" } });
    });
    await assert.rejects(client.billing.catalog(), (e: unknown) => {
      assert.ok(e instanceof ServiceUnreachableError);
      assert.equal(e.lastStatus, 502);
      assert.equal(e.requestAttempts, DEFAULT_RETRY_POLICY.maxAttempts);
      return true;
    });
    assert.equal(calls, DEFAULT_RETRY_POLICY.maxAttempts);
  });
});

describe("webhook signatures", () => {
  const body = '{"id":"evt_1","type":"future.thing","created":1795000000,"account_id":null,"data":{"x":1}}';
  const secret = "whsec_test";
  const now = 1_795_000_000_000;

  test("valid, rotated secrets, several v1 entries", () => {
    const header = signPayload(body, secret, now / 1000);
    verifySignature(body, header, secret, { now });
    verifySignature(Buffer.from(body), header, ["whsec_old", secret], { now });
    verifySignature(body, `${header},v1=${"0".repeat(64)}`, secret, { now });
    verifySignature(body, `t=${now / 1000},v1=${"0".repeat(64)},${header.split(",")[1]}`, secret, { now });
  });

  test("each refusal has its code", () => {
    const header = signPayload(body, secret, now / 1000);
    const code = (fn: () => void) => {
      try {
        fn();
      } catch (e) {
        assert.ok(e instanceof WebhookVerificationError);
        return e.code;
      }
      return "accepted";
    };
    assert.equal(code(() => verifySignature(body, undefined, secret, { now })), "missing_signature");
    assert.equal(code(() => verifySignature(body, "v1=abc", secret, { now })), "malformed_signature");
    assert.equal(code(() => verifySignature(body, "t=soon,v1=abc", secret, { now })), "malformed_signature");
    assert.equal(code(() => verifySignature(body, header, secret, { now: now + 301_000 })), "stale_signature");
    assert.equal(code(() => verifySignature(body, header, secret, { now: now - 301_000 })), "stale_signature");
    assert.equal(code(() => verifySignature(body, header, secret, { now: now + 299_000 })), "accepted");
    assert.equal(code(() => verifySignature(body, header, secret, { now: now + 10 ** 9, toleranceSeconds: 0 })), "accepted");
    assert.equal(code(() => verifySignature(body, header, "whsec_other", { now })), "invalid_signature");
    assert.equal(code(() => verifySignature(body.replace("1}", "2}"), header, secret, { now })), "invalid_signature");
    assert.equal(code(() => verifySignature(body, header.slice(0, -2), secret, { now })), "invalid_signature");
  });

  test("unknown types parse as unknown; bad bodies are refused", () => {
    const event = parseEvent(body);
    assert.equal(event.known, false);
    assert.equal(event.type, "future.thing");
    assert.deepEqual(event.data, { x: 1 });
    assert.throws(() => parseEvent("not json"), WebhookVerificationError);
    assert.throws(() => parseEvent('{"type":"x"}'), WebhookVerificationError);
  });
});

describe("coverage of the API", () => {
  // Operations Chronote's services do not call: raw ledger holds (recordings hold through the
  // usage API), operator grants and the notification outbox (operators use the CLI), health,
  // and Stripe's own webhook endpoint.
  const NOT_COVERED = new Set([
    "GET /healthz",
    "GET /readyz",
    "POST /v1/accounts/{account_id}/holds",
    "GET /v1/holds/{hold_id}",
    "POST /v1/holds/{hold_id}/extend",
    "POST /v1/holds/{hold_id}/capture",
    "POST /v1/holds/{hold_id}/release",
    "POST /v1/accounts/{account_id}/grants",
    "GET /v1/notifications",
    "GET /v1/notifications/{notification_id}",
    "POST /webhooks/stripe",
  ]);

  test("every operation of the server's OpenAPI is a client method, or listed as not for services", () => {
    const generated = readFileSync(join(packageDir, "src", "generated", "openapi.ts"), "utf8");
    const client = readFileSync(join(packageDir, "src", "client.ts"), "utf8");
    const operations = new Set<string>();
    const pathsBlock = generated.slice(generated.indexOf("export interface paths"), generated.indexOf("export type webhooks"));
    for (const block of pathsBlock.split(/\n {4}"/).slice(1)) {
      const path = block.slice(0, block.indexOf('"'));
      for (const m of block.matchAll(/^ {8}(get|put|post|delete|patch): operations/gm)) {
        operations.add(`${(m[1] ?? "").toUpperCase()} ${path}`);
      }
    }
    assert.ok(operations.size > 40, `found ${operations.size} operations`);
    const called = new Set([...client.matchAll(/this\.t\.api\.(GET|POST|PUT|PATCH|DELETE)\("([^"]+)"/g)].map((m) => `${m[1]} ${m[2]}`));
    const missing = [...operations].filter((op) => !called.has(op) && !NOT_COVERED.has(op));
    assert.deepEqual(missing, [], "add a client method for these operations, or list them in NOT_COVERED");
    const gone = [...called].filter((op) => !operations.has(op));
    assert.deepEqual(gone, [], "the client calls operations the server no longer has");
  });
});
