// Errors as the server answers them, typed: a decline with its attempts, a plan gate, a
// validation error with its fields, a permission denial, an idempotency conflict; and bad input
// refused by the client before sending, with the same code and field as the server's answer.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  type ChronoteBillingClient,
  ChronoteBillingError,
  UsageDeclinedError,
  ValidationError,
  isProblem,
} from "../src/index.js";
import { clientFor, holdAllBut, touchPersonalAllowance } from "./support/fixtures.js";
import { Proxy } from "./support/proxy.js";
import { type BillingServer, snowflake, startServer } from "./support/server.js";

let server: BillingServer;
let billing: ChronoteBillingClient;

before(async () => {
  server = await startServer();
  billing = clientFor(server);
});

after(async () => {
  await server?.stop();
});

async function rejection(promise: Promise<unknown>): Promise<ChronoteBillingError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof ChronoteBillingError, `expected a ChronoteBillingError, got ${String(error)}`);
    return error;
  }
  assert.fail("expected the call to be refused");
}

describe("declines", () => {
  test("no credits: UsageDeclinedError with the payer tried and why", async () => {
    const user = snowflake();
    await touchPersonalAllowance(billing, user);
    const account = await billing.accounts.personal(user);
    await holdAllBut(server, billing, account.id, 0, { userId: user });
    const error = await rejection(
      billing.recordings.start(
        { context: "personal", capture_source: "desktop", requested_minutes: 10 },
        { as: { userId: user } },
      ),
    );
    assert.ok(error instanceof UsageDeclinedError);
    assert.equal(error.gate, false);
    assert.equal(error.status, 402);
    assert.equal(error.code, "insufficient_credits");
    assert.equal(error.attempts.length, 1);
    assert.equal(error.attempts[0]?.funding_source, "personal");
    assert.equal(error.attempts[0]?.account_id, account.id);
    assert.match(error.attempts[0]?.reason ?? "", /0 credits available, 10 needed/);
    assert.ok(error.idempotencyKey, "the key of the refused write is kept for the report");
    assert.equal(error.sent, true);
  });

  test("several payers, several reasons: usage_declined with one attempt per payer", async () => {
    const owner = snowflake();
    const member = snowflake();
    const org = await billing.orgs.create({ name: `Capped ${member}` }, { as: { userId: owner } });
    await billing.orgs.addMember(org.id, { user_id: member, role: "member" }, { as: { userId: owner } });
    const auth = await billing.orgs.authorize(
      org.id,
      { subject_type: "member", subject_id: member, monthly_cap_credits: 5 },
      { as: { userId: owner } },
    );
    await server.grant(`org:${org.id}`, 100);
    await touchPersonalAllowance(billing, member);
    await holdAllBut(server, billing, (await billing.accounts.personal(member)).id, 0, { userId: member });

    const error = await rejection(
      billing.recordings.start(
        { context: "personal", capture_source: "desktop", requested_minutes: 10 },
        { as: { userId: member } },
      ),
    );
    assert.ok(error instanceof UsageDeclinedError);
    assert.equal(error.code, "usage_declined");
    assert.equal(error.status, 402);
    assert.deepEqual(
      error.attempts.map((a) => [a.funding_source, a.code]),
      [
        ["personal", "insufficient_credits"],
        [auth.id, "cap_reached"],
      ],
    );
  });

  test("a plan gate: longer than the plan allows is a 422 decline, not fixed by credits", async () => {
    const error = await rejection(
      billing.recordings.start(
        { context: "personal", capture_source: "desktop", requested_minutes: 61 },
        { as: { userId: snowflake() } },
      ),
    );
    assert.ok(error instanceof UsageDeclinedError);
    assert.equal(error.code, "recording_too_long");
    assert.equal(error.status, 422);
    assert.equal(error.gate, true);
    assert.equal(error.attempts[0]?.code, "recording_too_long");
  });
});

describe("other problems", () => {
  test("a validation error carries its fields", async () => {
    const error = await rejection(billing.orgs.create({ name: "" }, { as: { userId: snowflake() } }));
    assert.ok(error instanceof ValidationError);
    assert.equal(error.code, "validation_error");
    assert.equal(error.fields[0]?.field, "name");
    assert.ok(error.fields[0]?.message);
  });

  test("another payer's account is denied, naming the missing permission", async () => {
    const owner = snowflake();
    const account = await billing.accounts.personal(owner);
    const error = await rejection(billing.accounts.balance(account.id, { as: { userId: snowflake() } }));
    assert.equal(error.code, "permission_denied");
    assert.equal(error.status, 403);
    assert.equal(error.problem.missing_permission, "owner of this personal account");
    assert.ok(isProblem(error, "permission_denied", "not_found"));
  });

  test("a key reused with other parameters is an idempotency conflict", async () => {
    const user = snowflake();
    const key = `reuse:${user}`;
    await billing.recordings.start(
      { context: "personal", capture_source: "desktop", requested_minutes: 5 },
      { as: { userId: user }, idempotencyKey: key },
    );
    const error = await rejection(
      billing.recordings.start(
        { context: "personal", capture_source: "desktop", requested_minutes: 6 },
        { as: { userId: user }, idempotencyKey: key },
      ),
    );
    assert.equal(error.code, "idempotency_conflict");
    assert.equal(error.status, 409);
  });

  test("an unknown recording is not_found", async () => {
    const error = await rejection(billing.recordings.get("rec_01m92q5egskz0frejap38z336j", { as: { userId: snowflake() } }));
    assert.equal(error.code, "not_found");
  });
});

describe("bad input is refused before sending, with the server's own code and field", () => {
  let proxy: Proxy;
  let viaProxy: ChronoteBillingClient;
  before(async () => {
    proxy = await new Proxy(server.baseUrl).start();
    viaProxy = clientFor(server, { baseUrl: proxy.url });
  });
  after(async () => proxy?.stop());

  /** What the server answers to the same request sent as is. */
  async function serverAnswer(
    path: string,
    body: unknown,
    actingUser: string,
  ): Promise<{ status: number; code: string; field: unknown }> {
    const response = await fetch(server.baseUrl + path, {
      method: "POST",
      headers: {
        Authorization: `Bearer ${server.apiKey}`,
        "Content-Type": "application/json",
        "Idempotency-Key": `raw:${Math.random()}`,
        "Chronote-Acting-User": actingUser,
      },
      body: JSON.stringify(body),
    });
    const problem = (await response.json()) as { code: string; field?: unknown; errors?: { field: string }[] };
    return { status: response.status, code: problem.code, field: problem.field ?? problem.errors?.[0]?.field };
  }

  test("each refusal matches the server's answer", async () => {
    const user = snowflake();
    const open = await billing.recordings.start(
      { context: "personal", capture_source: "desktop", requested_minutes: 5 },
      { as: { userId: user } },
    );
    const start = (over: Record<string, unknown>) => ({
      context: "personal",
      capture_source: "desktop",
      requested_minutes: 10,
      ...over,
    });
    const cases: { name: string; path: string; body: unknown; actor?: string; call: () => Promise<unknown> }[] = [
      {
        name: "a non-snowflake acting user",
        path: "/v1/recordings",
        body: start({}),
        actor: "not-a-user",
        call: () => viaProxy.recordings.start(start({}) as never, { as: { userId: "not-a-user" } }),
      },
      {
        name: "zero minutes",
        path: "/v1/recordings",
        body: start({ requested_minutes: 0 }),
        call: () => viaProxy.recordings.start(start({ requested_minutes: 0 }) as never, { as: { userId: user } }),
      },
      {
        name: "negative minutes",
        path: "/v1/recordings",
        body: start({ requested_minutes: -5 }),
        call: () => viaProxy.recordings.start(start({ requested_minutes: -5 }) as never, { as: { userId: user } }),
      },
      {
        name: "more minutes than any plan records",
        path: "/v1/recordings",
        body: start({ requested_minutes: 2000 }),
        call: () => viaProxy.recordings.start(start({ requested_minutes: 2000 }) as never, { as: { userId: user } }),
      },
      {
        name: "a server source in a personal recording",
        path: "/v1/recordings",
        body: start({ capture_source: "discord_voice" }),
        call: () => viaProxy.recordings.start(start({ capture_source: "discord_voice" }) as never, { as: { userId: user } }),
      },
      {
        name: "an unknown capture source",
        path: "/v1/recordings",
        body: start({ capture_source: "fax" }),
        call: () => viaProxy.recordings.start(start({ capture_source: "fax" }) as never, { as: { userId: user } }),
      },
      {
        name: "a server meeting without its guild",
        path: "/v1/recordings",
        body: start({ context: "server", capture_source: "discord_voice" }),
        call: () =>
          viaProxy.recordings.start(start({ context: "server", capture_source: "discord_voice" }) as never, {
            as: { userId: user },
          }),
      },
      {
        name: "a non-snowflake guild",
        path: "/v1/recordings",
        body: start({ context: "server", capture_source: "discord_voice", guild_id: "my-guild" }),
        call: () =>
          viaProxy.recordings.start(start({ context: "server", capture_source: "discord_voice", guild_id: "my-guild" }) as never, {
            as: { userId: user },
          }),
      },
      {
        name: "an upload sized in minutes",
        path: "/v1/recordings",
        body: start({ capture_source: "upload" }),
        call: () => viaProxy.recordings.start(start({ capture_source: "upload" }) as never, { as: { userId: user } }),
      },
      {
        name: "zero additional minutes",
        path: `/v1/recordings/${open.id}/extend`,
        body: { additional_minutes: 0 },
        call: () => viaProxy.recordings.extend(open.id, { additional_minutes: 0 }, { as: { userId: user } }),
      },
      {
        name: "a finish without sources",
        path: `/v1/recordings/${open.id}/finish`,
        body: { seconds_by_source: {} },
        call: () => viaProxy.recordings.finish(open.id, { seconds_by_source: {} }, { as: { userId: user } }),
      },
      {
        name: "five sources",
        path: `/v1/recordings/${open.id}/finish`,
        body: { seconds_by_source: { a: 1, b: 1, c: 1, d: 1, e: 1 } },
        call: () =>
          viaProxy.recordings.finish(open.id, { seconds_by_source: { a: 1, b: 1, c: 1, d: 1, e: 1 } }, { as: { userId: user } }),
      },
      {
        name: "negative seconds",
        path: `/v1/recordings/${open.id}/finish`,
        body: { seconds_by_source: { mic: -1 } },
        call: () => viaProxy.recordings.finish(open.id, { seconds_by_source: { mic: -1 } }, { as: { userId: user } }),
      },
      {
        name: "an unknown metered event",
        path: "/v1/usage/events",
        body: { event_id: "e1", event_type: "lunch", context: "personal" },
        call: () =>
          viaProxy.events.charge({ event_id: "e1", event_type: "lunch", context: "personal" }, { as: { userId: user } }),
      },
    ];
    for (const c of cases) {
      const before = proxy.seen.length;
      const refused = await rejection(c.call());
      assert.equal(proxy.seen.length, before, `${c.name}: nothing was sent`);
      assert.equal(refused.sent, false, c.name);
      const answer = await serverAnswer(c.path, c.body, c.actor ?? user);
      assert.deepEqual(
        { status: refused.status, code: refused.code, field: refused.fields[0]?.field },
        answer,
        `${c.name}: the client's refusal and the server's answer`,
      );
    }
    await billing.recordings.cancel(open.id, { as: { userId: user } });
  });
});
