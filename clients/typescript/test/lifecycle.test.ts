// The meeting lifecycle against a real server: a personal desktop recording, a server meeting
// falling back to its organization, a partial approval that stops at its budget, a decline on
// extend, the service unreachable during a heartbeat, and a duplicate finish.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  type ChronoteBillingClient,
  ChronoteBillingError,
  MeetingRecording,
  UploadRecording,
  UsageDeclinedError,
} from "../src/index.js";
import { FakeClock, clientFor, holdAllBut, touchPersonalAllowance, touchServerAllowance } from "./support/fixtures.js";
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

describe("a personal desktop recording", () => {
  test("holds, extends from the heartbeat, finishes once with seconds per source", async () => {
    const user = snowflake();
    const clock = new FakeClock();
    const meeting = await MeetingRecording.start(billing, {
      context: "personal",
      captureSource: "desktop",
      userId: user,
      meetingId: `desk-${user}`,
      initialMinutes: 20,
      clock: clock.read,
    });
    assert.equal(meeting.recording.status, "open");
    assert.equal(meeting.recording.payer_kind, "personal");
    assert.equal(meeting.recording.approved_minutes, 20);
    assert.equal(meeting.stopAt, null);

    let beat = await meeting.heartbeat();
    assert.equal(beat.outcome, "enough_held");
    assert.equal(beat.action, "continue");

    clock.advanceMinutes(16); // 4 held minutes left: under the 5-minute threshold
    beat = await meeting.heartbeat();
    assert.equal(beat.outcome, "extended");
    assert.equal(beat.recording.approved_minutes, 35);
    assert.equal(beat.stopAt, null);

    clock.advanceMinutes(1);
    assert.equal((await meeting.heartbeat()).outcome, "enough_held");

    const account = await billing.accounts.personal(user);
    const before = await billing.accounts.balance(account.id, { as: { userId: user } });
    const done = await meeting.finish({ mic: 24 * 60 + 10, system: 24 * 60 });
    assert.equal(done.status, "finished");
    assert.equal(done.charged, 25_000, "the longest source, 24 min 10 s, rounded up once to 25 minutes");
    assert.deepEqual(done.seconds_by_source, { mic: 1450, system: 1440 });
    const afterFinish = await billing.accounts.balance(account.id, { as: { userId: user } });
    assert.equal(before.posted - afterFinish.posted, 25_000);
    assert.equal(afterFinish.held, 0);

    // A duplicate finish (a retry after a lost answer): the settled record, charged once.
    const again = await meeting.finish({ system: 1440, mic: 1450 });
    assert.equal(again.id, done.id);
    assert.equal(again.charged, 25_000);
    assert.equal((await billing.accounts.balance(account.id, { as: { userId: user } })).posted, afterFinish.posted);

    // A second process resuming it and finishing with other figures is refused, not charged.
    const resumed = await MeetingRecording.resume(billing, done.id, { userId: user });
    await assert.rejects(resumed.finish({ mic: 3000 }), (error: unknown) => {
      assert.ok(error instanceof ChronoteBillingError);
      assert.equal(error.status, 409);
      assert.ok(["recording_already_settled", "idempotency_conflict"].includes(error.code), error.code);
      return true;
    });
    // ... and with the same figures it is the same settled record.
    assert.equal((await resumed.finish({ mic: 1450, system: 1440 })).charged, 25_000);
    assert.equal((await billing.accounts.balance(account.id, { as: { userId: user } })).posted, afterFinish.posted);

    const heartbeatAfter = await meeting.heartbeat();
    assert.equal(heartbeatAfter.outcome, "closed");
    assert.equal(heartbeatAfter.action, "stop");
  });

  test("cancel releases the hold; fail releases it; both are safe to repeat", async () => {
    const user = snowflake();
    const account = await billing.accounts.personal(user);
    const meeting = await MeetingRecording.start(billing, {
      context: "personal",
      captureSource: "web",
      userId: user,
      meetingId: `web-${user}`,
      initialMinutes: 10,
    });
    assert.equal((await billing.accounts.balance(account.id, { as: { userId: user } })).held, 10_000);
    const cancelled = await meeting.cancel();
    assert.equal(cancelled.status, "cancelled");
    assert.equal((await meeting.cancel()).status, "cancelled");
    const balance = await billing.accounts.balance(account.id, { as: { userId: user } });
    assert.equal(balance.held, 0);

    const second = await MeetingRecording.start(billing, {
      context: "personal",
      captureSource: "quick_capture",
      userId: user,
      meetingId: `qc-${user}`,
      initialMinutes: 5,
    });
    assert.equal((await second.fail()).status, "failed");
    assert.equal((await second.fail()).status, "failed");
    const afterFail = await billing.accounts.balance(account.id, { as: { userId: user } });
    assert.equal(afterFail.held, 0);
    assert.equal(afterFail.posted, balance.posted, "nothing charged");
  });

  test("a start key of a settled recording is refused rather than mistaken for a new recording", async () => {
    const user = snowflake();
    const first = await MeetingRecording.start(billing, {
      context: "personal",
      captureSource: "desktop",
      userId: user,
      meetingId: `again-${user}`,
      initialMinutes: 5,
    });
    await first.finish({ mic: 60 });
    await assert.rejects(
      MeetingRecording.start(billing, {
        context: "personal",
        captureSource: "desktop",
        userId: user,
        meetingId: `again-${user}`,
        initialMinutes: 5,
      }),
      (error: unknown) => error instanceof ChronoteBillingError && error.code === "recording_not_open",
    );
  });
});

describe("a server meeting", () => {
  test("falls back to its organization when the server cannot cover it, and stays there", async () => {
    const owner = snowflake();
    const guild = snowflake();
    const starter = snowflake();
    const org = await billing.orgs.create({ name: `Acme ${guild}` }, { as: { userId: owner } });
    await billing.orgs.linkServer(org.id, guild, { as: { userId: owner, manageGuilds: [guild] } });
    const auth = await billing.orgs.authorize(
      org.id,
      { subject_type: "server", subject_id: guild, monthly_cap_credits: 300 },
      { as: { userId: owner } },
    );
    await server.grant(`org:${org.id}`, 500);
    // The server's own free allowance is spent elsewhere: hold it all away.
    await touchServerAllowance(billing, guild, starter);
    const serverAccount = await billing.accounts.server(guild, { as: { userId: starter, manageGuilds: [guild] } });
    await holdAllBut(server, billing, serverAccount.id, 0, { userId: starter, manageGuilds: [guild] });

    const clock = new FakeClock();
    const meeting = await MeetingRecording.start(billing, {
      context: "server",
      captureSource: "discord_voice",
      userId: starter,
      guildId: guild,
      meetingId: `voice-${guild}`,
      initialMinutes: 30,
      clock: clock.read,
    });
    const rec = meeting.recording;
    assert.equal(rec.payer_kind, "organization");
    assert.equal(rec.authorization_id, auth.id);
    assert.equal(rec.attempts?.length, 1);
    assert.equal(rec.attempts?.[0]?.funding_source, "server");
    assert.equal(rec.attempts?.[0]?.code, "insufficient_credits");

    clock.advanceMinutes(27);
    const beat = await meeting.heartbeat();
    assert.equal(beat.outcome, "extended");
    assert.equal(beat.recording.payer_account_id, rec.payer_account_id, "extensions stay on the same payer");
    assert.equal(beat.recording.approved_minutes, 45);

    const done = await meeting.finish({ voice: 40 * 60 });
    assert.equal(done.charged, 40_000);
    const orgBalance = await billing.accounts.balance(rec.payer_account_id, { as: { userId: owner } });
    assert.equal(orgBalance.posted, 460_000);
    const attribution = await billing.meetings.attribution(`voice-${guild}`, { as: { userId: owner } });
    assert.equal(attribution.payer_account_id, rec.payer_account_id);
    assert.equal(attribution.authorization_id, auth.id);
  });
});

describe("an auto-recorded server meeting", () => {
  test("is started, extended and finished with no acting user under the recordings:auto scope", async () => {
    const guild = snowflake();
    const bot = clientFor(server, { apiKey: await server.createKey(["recordings:auto"]) });
    const clock = new FakeClock();
    const meeting = await MeetingRecording.start(bot, {
      context: "server",
      captureSource: "discord_voice",
      autoRecord: true,
      guildId: guild,
      meetingId: `auto-${guild}`,
      initialMinutes: 20,
      clock: clock.read,
    });
    assert.equal(meeting.actor, null);
    assert.equal(meeting.recording.user_id, null);
    assert.equal(meeting.recording.payer_kind, "server");
    clock.advanceMinutes(16);
    assert.equal((await meeting.heartbeat()).outcome, "extended");
    // Any manager of the server may act on it as well.
    const manager = { userId: snowflake(), manageGuilds: [guild] };
    const seen = await MeetingRecording.resume(billing, meeting.id, manager);
    assert.equal(seen.recording.approved_minutes, 35);
    assert.equal((await meeting.finish({ voice: 30 * 60 })).charged, 30_000);
    await assert.rejects(
      MeetingRecording.start(bot, {
        context: "personal",
        captureSource: "desktop",
        autoRecord: true,
        meetingId: `auto-personal-${guild}`,
      }),
      (e: unknown) => e instanceof ChronoteBillingError && e.sent === false && e.code === "validation_error",
    );
  });
});

describe("a partial approval", () => {
  test("gets a known budget and stops at it; the heartbeat never asks again", async () => {
    const user = snowflake();
    await touchPersonalAllowance(billing, user);
    const account = await billing.accounts.personal(user);
    await holdAllBut(server, billing, account.id, 12_000, { userId: user });

    const clock = new FakeClock();
    const meeting = await MeetingRecording.start(billing, {
      context: "personal",
      captureSource: "desktop",
      userId: user,
      meetingId: `partial-${user}`,
      initialMinutes: 45,
      allowPartial: true,
      clock: clock.read,
    });
    assert.equal(meeting.recording.partial, true);
    assert.equal(meeting.recording.approved_minutes, 12);
    assert.equal(meeting.finalReason, "partial");
    assert.equal(meeting.stopAt?.getTime(), meeting.startedAt + 12 * 60_000);

    clock.advanceMinutes(9);
    let beat = await meeting.heartbeat();
    assert.equal(beat.outcome, "budget_final");
    assert.equal(beat.action, "continue");
    assert.equal(beat.stopAt?.getTime(), meeting.startedAt + 12 * 60_000);

    clock.advanceMinutes(3);
    beat = await meeting.heartbeat();
    assert.equal(beat.action, "stop");
    assert.equal(beat.recording.approved_minutes, 12, "no extension was asked for");

    const done = await meeting.finish({ mic: 12 * 60 });
    assert.equal(done.charged, 12_000);
  });

  test("an extension approved in part makes the budget final", async () => {
    const user = snowflake();
    await touchPersonalAllowance(billing, user);
    const account = await billing.accounts.personal(user);
    await holdAllBut(server, billing, account.id, 27_000, { userId: user });
    const clock = new FakeClock();
    const meeting = await MeetingRecording.start(billing, {
      context: "personal",
      captureSource: "mobile",
      userId: user,
      meetingId: `mobile-${user}`,
      initialMinutes: 20,
      clock: clock.read,
    });
    clock.advanceMinutes(16);
    const beat = await meeting.heartbeat();
    assert.equal(beat.outcome, "extended_partially");
    assert.equal(beat.recording.approved_minutes, 27);
    assert.equal(beat.stopAt?.getTime(), meeting.startedAt + 27 * 60_000);
    assert.equal(meeting.finalReason, "partial");
    await meeting.cancel();
  });
});

describe("a decline on extend", () => {
  test("keeps what is held, reports when to stop, and surfaces the typed decline", async () => {
    const user = snowflake();
    await touchPersonalAllowance(billing, user);
    const account = await billing.accounts.personal(user);
    await holdAllBut(server, billing, account.id, 25_000, { userId: user });
    const clock = new FakeClock();
    const meeting = await MeetingRecording.start(billing, {
      context: "personal",
      captureSource: "desktop",
      userId: user,
      meetingId: `decline-${user}`,
      initialMinutes: 20,
      extendAllowPartial: false,
      clock: clock.read,
    });
    clock.advanceMinutes(16);
    const beat = await meeting.heartbeat();
    assert.equal(beat.outcome, "declined");
    assert.equal(beat.action, "continue");
    assert.equal(beat.stopAt?.getTime(), meeting.startedAt + 20 * 60_000);
    assert.ok(beat.error instanceof UsageDeclinedError);
    assert.equal(beat.error.code, "insufficient_credits");
    assert.equal(beat.error.status, 402);
    assert.equal(beat.error.attempts.length, 1);
    assert.equal(beat.error.attempts[0]?.funding_source, "personal");
    assert.equal(beat.recording.approved_minutes, 20);
    assert.equal((await billing.recordings.get(meeting.id, { as: { userId: user } })).approved_minutes, 20);

    clock.advanceMinutes(1);
    assert.equal((await meeting.heartbeat()).outcome, "budget_final");
    clock.advanceMinutes(3);
    assert.equal((await meeting.heartbeat()).action, "stop");
    assert.equal((await meeting.finish({ mic: 20 * 60 })).charged, 20_000);
  });

  test("at the plan's longest recording the budget is final without asking", async () => {
    const user = snowflake();
    const clock = new FakeClock();
    const meeting = await MeetingRecording.start(billing, {
      context: "personal",
      captureSource: "desktop",
      userId: user,
      meetingId: `long-${user}`,
      initialMinutes: 50,
      clock: clock.read,
    });
    clock.advanceMinutes(46);
    let beat = await meeting.heartbeat();
    assert.equal(beat.outcome, "extended"); // by the 10 minutes left to personal_free's 60
    assert.equal(beat.recording.approved_minutes, 60);
    assert.equal(meeting.finalReason, "max_length");
    assert.equal(beat.stopAt?.getTime(), meeting.startedAt + 60 * 60_000);
    clock.advanceMinutes(10);
    beat = await meeting.heartbeat();
    assert.equal(beat.outcome, "budget_final");
    await meeting.cancel();
  });
});

describe("the service unreachable during a heartbeat", () => {
  test("the meeting goes on within its hold, then stops at its end; the retried extension holds once", async () => {
    const proxy = await new Proxy(server.baseUrl).start();
    try {
      const viaProxy = clientFor(server, { baseUrl: proxy.url });
      const user = snowflake();
      const clock = new FakeClock();
      const meeting = await MeetingRecording.start(viaProxy, {
        context: "personal",
        captureSource: "desktop",
        userId: user,
        meetingId: `outage-${user}`,
        initialMinutes: 20,
        clock: clock.read,
        heartbeatRetry: { maxAttempts: 2, baseDelayMs: 10, maxDelayMs: 20, timeoutMs: 2_000 },
      });
      // Every answer to the extension is lost: the server extends on the first attempt, the
      // client never hears of it.
      proxy.when({ method: "POST", path: /\/extend$/, action: { kind: "drop_response" }, times: Infinity });
      clock.advanceMinutes(16);
      let beat = await meeting.heartbeat();
      assert.equal(beat.outcome, "unreachable");
      assert.equal(beat.action, "continue", "4 held minutes are left");
      assert.equal(beat.stopAt, null);
      assert.equal(proxy.requests("POST", /\/extend$/).length, 2);
      const keys = new Set(proxy.requests("POST", /\/extend$/).map((r) => r.headers["idempotency-key"]));
      assert.equal(keys.size, 1, "every attempt carries the same key");

      clock.advanceMinutes(4);
      beat = await meeting.heartbeat();
      assert.equal(beat.outcome, "unreachable");
      assert.equal(beat.action, "stop", "nothing is known to be held past the 20th minute");

      // Back online: the same extension (same key) returns what the server did the first time.
      proxy.clearRules();
      beat = await meeting.heartbeat();
      assert.equal(beat.outcome, "extended");
      assert.equal(beat.recording.approved_minutes, 35, "extended once, not once per attempt");
      assert.equal(beat.action, "continue");
      const account = await billing.accounts.personal(user);
      assert.equal((await billing.accounts.balance(account.id, { as: { userId: user } })).held, 35_000);
      await meeting.cancel();
    } finally {
      await proxy.stop();
    }
  });

  test("overlapping heartbeats share one extension", async () => {
    const user = snowflake();
    const clock = new FakeClock();
    const meeting = await MeetingRecording.start(billing, {
      context: "personal",
      captureSource: "desktop",
      userId: user,
      meetingId: `overlap-${user}`,
      initialMinutes: 10,
      clock: clock.read,
    });
    clock.advanceMinutes(6);
    const [a, b] = await Promise.all([meeting.heartbeat(), meeting.heartbeat()]);
    assert.equal(a, b);
    assert.equal(a.recording.approved_minutes, 25);
    await meeting.cancel();
  });
});

describe("an upload", () => {
  test("is held from its declared duration and settled once at the probed duration", async () => {
    const user = snowflake();
    const account = await billing.accounts.personal(user);
    const upload = await UploadRecording.start(billing, { userId: user, uploadId: `up-${user}`, declaredDurationSeconds: 1500 });
    assert.equal(upload.recording.kind, "upload");
    assert.equal(upload.recording.approved_minutes, 25);
    const before = await billing.accounts.balance(account.id, { as: { userId: user } });
    // Processing retries (three workers, say) settle with the same probed figure: charged once.
    const worker = await UploadRecording.resume(billing, upload.id, { userId: user });
    const settled = await Promise.all([upload.settle(1441), worker.settle(1441), upload.settle(1441)]);
    for (const s of settled) assert.equal(s.charged, 25_000);
    const afterSettle = await billing.accounts.balance(account.id, { as: { userId: user } });
    assert.equal(before.posted - afterSettle.posted, 25_000);
    assert.equal(afterSettle.held, 0);
  });

  test("sized from the file when no duration is declared; failed processing charges nothing", async () => {
    const user = snowflake();
    const account = await billing.accounts.personal(user);
    const upload = await UploadRecording.start(billing, { userId: user, uploadId: `file-${user}`, fileSizeBytes: 12_000_000 });
    assert.equal(upload.recording.approved_minutes, 50, "12 MB at 32 kbit/s: 50 minutes");
    const failed = await upload.fail();
    assert.equal(failed.status, "failed");
    const balance = await billing.accounts.balance(account.id, { as: { userId: user } });
    assert.equal(balance.held, 0);
    assert.equal(balance.posted, 120_000, "the free allowance, untouched");
  });
});
