// Retries that charge once: a proxy between the client and the real server drops answers on
// purpose (the server did the work, the client never heard), answers 503/429 with Retry-After,
// or refuses connections; the client retries under the same key and the ledger shows one charge.
import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";

import {
  type ChronoteBillingClient,
  ChronoteBillingError,
  ServiceUnreachableError,
  chargeAskQuestion,
  chargeChatToSpeech,
} from "../src/index.js";
import { clientFor } from "./support/fixtures.js";
import { Proxy } from "./support/proxy.js";
import { type BillingServer, snowflake, startServer } from "./support/server.js";

let server: BillingServer;
let proxy: Proxy;
let direct: ChronoteBillingClient;
let viaProxy: ChronoteBillingClient;

before(async () => {
  server = await startServer();
  proxy = await new Proxy(server.baseUrl).start();
  direct = clientFor(server);
  viaProxy = clientFor(server, { baseUrl: proxy.url, retry: { baseDelayMs: 20, maxDelayMs: 100 } });
});

after(async () => {
  await proxy?.stop();
  await server?.stop();
});

afterEach(() => proxy.clearRules());

describe("a lost answer", () => {
  test("to a start: the retry returns the same recording, held once", async () => {
    const user = snowflake();
    proxy.when({ method: "POST", path: /^\/v1\/recordings$/, action: { kind: "drop_response" } });
    const rec = await viaProxy.recordings.start(
      { context: "personal", capture_source: "desktop", requested_minutes: 30, meeting_id: `lost-${user}` },
      { as: { userId: user } },
    );
    const sent = proxy.requests("POST", /^\/v1\/recordings$/);
    assert.equal(sent.length, 2);
    assert.equal(sent[0]?.upstreamStatus, 201, "the server placed the hold the first time");
    assert.equal(sent[0]?.headers["idempotency-key"], sent[1]?.headers["idempotency-key"]);
    assert.match(sent[0]?.headers["idempotency-key"] ?? "", /^cbc_[0-9a-f-]{36}$/, "generated once per call");
    const account = await direct.accounts.personal(user);
    const balance = await direct.accounts.balance(account.id, { as: { userId: user } });
    assert.equal(balance.held, 30_000, "one hold, not two");
    assert.equal(rec.approved_minutes, 30);
  });

  test("to a finish: the retry charges once", async () => {
    const user = snowflake();
    const account = await direct.accounts.personal(user);
    const rec = await direct.recordings.start(
      { context: "personal", capture_source: "desktop", requested_minutes: 30 },
      { as: { userId: user } },
    );
    proxy.when({ method: "POST", path: /\/finish$/, action: { kind: "drop_response" }, times: 2 });
    const done = await viaProxy.recordings.finish(
      rec.id,
      { seconds_by_source: { mic: 600 } },
      { as: { userId: user }, idempotencyKey: `recording:${rec.id}:finish` },
    );
    assert.equal(done.charged, 10_000);
    assert.equal(proxy.requests("POST", /\/finish$/).length, 3);
    const balance = await direct.accounts.balance(account.id, { as: { userId: user } });
    assert.equal(balance.posted, 110_000, "120 free credits less one 10-minute charge");
    const captures = (await direct.accounts.transferLog(account.id, { limit: 100 }, { as: { userId: user } })).data.filter((l) => l.phase === "post" && l.amount < 0);
    assert.equal(captures.length, 1);
  });

  test("to a metered event: the event id charges once", async () => {
    const user = snowflake();
    const guild = snowflake();
    const messageId = `msg-${user}`;
    proxy.when({ method: "POST", path: /^\/v1\/usage\/events$/, action: { kind: "drop_response" } });
    const first = await chargeChatToSpeech(viaProxy, { userId: user, context: "server", guildId: guild, messageId });
    const again = await chargeChatToSpeech(direct, { userId: user, context: "server", guildId: guild, messageId });
    assert.equal(again.id, first.id);
    const manager = { userId: snowflake(), manageGuilds: [guild] };
    const serverAccount = await direct.accounts.server(guild, { as: manager });
    const lines = (await direct.accounts.transferLog(serverAccount.id, { limit: 100 }, { as: manager })).data.filter((l) => l.amount < 0);
    assert.equal(lines.length, 1);
    assert.equal(lines[0]?.amount, -50);

    const ask = await chargeAskQuestion(direct, { userId: user, context: "personal", questionId: `q-${user}` });
    assert.equal(ask.charged, 500);
    assert.equal(ask.event_type, "ask_question");
  });
});

describe("transient answers", () => {
  test("a 503 with Retry-After is waited for, then the call goes through", async () => {
    proxy.when({
      method: "GET",
      path: /^\/v1\/catalog$/,
      action: { kind: "answer", status: 503, headers: { "Retry-After": "1", "Content-Type": "text/plain" }, body: "busy" },
    });
    const started = Date.now();
    const catalog = await viaProxy.billing.catalog();
    const waited = Date.now() - started;
    assert.ok(waited >= 1_000, `waited ${waited} ms`);
    assert.ok(catalog.plans.some((p) => p.id === "personal_pro"));
  });

  test("a 429 problem is retried under the same key; a longer Retry-After than allowed is not waited for", async () => {
    const user = snowflake();
    const problem = JSON.stringify({ type: "about:blank", title: "Slow down", status: 429, detail: "too many", code: "rate_limited", instance: "/v1/recordings" });
    proxy.when({
      method: "POST",
      path: /^\/v1\/recordings$/,
      action: { kind: "answer", status: 429, headers: { "Content-Type": "application/problem+json" }, body: problem },
    });
    const rec = await viaProxy.recordings.start(
      { context: "personal", capture_source: "web", requested_minutes: 5 },
      { as: { userId: user }, idempotencyKey: `web:${user}:start` },
    );
    assert.equal(rec.status, "open");
    const sent = proxy.requests("POST", /^\/v1\/recordings$/).filter((r) => r.headers["chronote-acting-user"] === user);
    assert.deepEqual(
      sent.map((r) => r.headers["idempotency-key"]),
      [`web:${user}:start`, `web:${user}:start`],
    );

    proxy.when({
      method: "GET",
      path: /^\/v1\/catalog$/,
      action: { kind: "answer", status: 429, headers: { "Retry-After": "3600", "Content-Type": "application/problem+json" }, body: problem },
    });
    await assert.rejects(viaProxy.billing.catalog(), (error: unknown) => {
      assert.ok(error instanceof ChronoteBillingError);
      assert.equal(error.code, "rate_limited");
      assert.equal(error.requestAttempts, 1);
      return true;
    });
  });

  test("no answer at all: ServiceUnreachableError with the key to retry with, and the retry charges once", async () => {
    const user = snowflake();
    const account = await direct.accounts.personal(user);
    const rec = await direct.recordings.start(
      { context: "personal", capture_source: "desktop", requested_minutes: 10 },
      { as: { userId: user } },
    );
    proxy.when({ method: "POST", path: /\/finish$/, action: { kind: "drop_response" }, times: Infinity });
    const error = await viaProxy.recordings
      .finish(rec.id, { seconds_by_source: { mic: 300 } }, { as: { userId: user }, retry: { maxAttempts: 3 } })
      .then(
        () => assert.fail("expected no answer"),
        (e: unknown) => e,
      );
    assert.ok(error instanceof ServiceUnreachableError);
    assert.equal(error.code, "service_unreachable");
    assert.equal(error.requestAttempts, 3);
    assert.ok(error.idempotencyKey);
    proxy.clearRules();
    // Later, the same call with the same key learns what the lost attempts did.
    const done = await viaProxy.recordings.finish(
      rec.id,
      { seconds_by_source: { mic: 300 } },
      { as: { userId: user }, idempotencyKey: error.idempotencyKey },
    );
    assert.equal(done.charged, 5_000);
    assert.equal((await direct.accounts.balance(account.id, { as: { userId: user } })).posted, 115_000);
  });

  test("a refused connection is retried; a caller's abort is not", async () => {
    proxy.when({ method: "GET", path: /^\/v1\/catalog$/, action: { kind: "refuse" } });
    const catalog = await viaProxy.billing.catalog();
    assert.equal(catalog.object, "catalog");
    assert.equal(proxy.requests("GET", /^\/v1\/catalog$/).slice(-2)[0]?.action, "refuse");

    proxy.when({ method: "GET", path: /^\/v1\/catalog$/, action: { kind: "refuse" }, times: Infinity });
    const controller = new AbortController();
    const pending = viaProxy.billing.catalog({ signal: controller.signal, retry: { baseDelayMs: 500, maxDelayMs: 500 } });
    setTimeout(() => controller.abort(new Error("caller gave up")), 50);
    await assert.rejects(pending, /caller gave up/);
  });
});

describe("headers of each call", () => {
  test("every write carries an Idempotency-Key; the acting user and guilds are per call", async () => {
    const alice = snowflake();
    const bob = snowflake();
    const guild = snowflake();
    const seenBefore = proxy.seen.length;
    await Promise.all([
      viaProxy.entitlements.get({ context: "personal" }, { as: { userId: alice } }),
      viaProxy.entitlements.get({ context: "server", guildId: guild }, { as: { userId: bob, manageGuilds: [guild] } }),
      viaProxy.billing.catalog(),
    ]);
    const org = await viaProxy.orgs.create({ name: "Headers Inc" }, { as: { userId: alice } });
    await viaProxy.fundingSources.setOrder([], { as: { userId: alice } });
    await viaProxy.orgs.addMember(org.id, { user_id: bob, role: "member" }, { as: { userId: alice } });
    const seen = proxy.seen.slice(seenBefore);
    const personal = seen.find((r) => r.path === "/v1/entitlements" && r.headers["chronote-acting-user"] === alice);
    const serverSide = seen.find((r) => r.path === "/v1/entitlements" && r.headers["chronote-acting-user"] === bob);
    const catalog = seen.find((r) => r.path === "/v1/catalog");
    assert.equal(personal?.headers["chronote-manage-guilds"], undefined);
    assert.equal(serverSide?.headers["chronote-manage-guilds"], guild);
    assert.equal(catalog?.headers["chronote-acting-user"], undefined, "no user leaks from one call to another");
    const writes = seen.filter((r) => r.method !== "GET");
    assert.ok(writes.length >= 3);
    for (const w of writes) assert.ok(w.headers["idempotency-key"], `${w.method} ${w.path} has a key`);
    assert.equal(new Set(writes.map((w) => w.headers["idempotency-key"])).size, writes.length);
  });
});
