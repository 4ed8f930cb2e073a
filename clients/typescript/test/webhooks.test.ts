// The webhook receiver: notifications the server really sent (a declined hold, a low balance),
// delivered by `chronote-billing deliver-notifications --once` to a receiver this test runs,
// verified and parsed into typed events; and the signature checked against the server's own
// signing code in both directions.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { type Server, createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";

import {
  type ChronoteBillingClient,
  type ChronoteEvent,
  MeetingRecording,
  UsageDeclinedError,
  WebhookVerificationError,
  constructEvent,
  createWebhookHandler,
  signPayload,
  verifySignature,
} from "../src/index.js";
import { clientFor, holdAllBut, touchPersonalAllowance, waitUntil } from "./support/fixtures.js";
import { type BillingServer, pythonPath, snowflake, startServer } from "./support/server.js";

const run = promisify(execFile);
const SECRET = "whsec_client_tests_outbound";

let receiver: Server;
let receiverUrl: string;
const received: ChronoteEvent[] = [];
const statuses: number[] = [];
let server: BillingServer;
let billing: ChronoteBillingClient;

before(async () => {
  const handle = createWebhookHandler({
    secrets: ["whsec_an_older_secret", SECRET],
    onEvent: (event) => {
      received.push(event);
    },
  });
  receiver = createServer((req, res) => {
    res.on("finish", () => statuses.push(res.statusCode));
    void handle(req, res);
  });
  await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", () => r()));
  receiverUrl = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/chronote/billing-events`;
  server = await startServer({ webhookUrl: receiverUrl, webhookSecret: SECRET });
  billing = clientFor(server);
});

after(async () => {
  await server?.stop();
  receiver?.closeAllConnections();
  await new Promise<void>((r) => receiver?.close(() => r()));
});

describe("notifications the server sent", () => {
  test("a declined hold and a low balance arrive verified and typed", async () => {
    // A low-balance alert at 100 credits, crossed by a 30-minute meeting on the 120 free ones.
    const lowUser = snowflake();
    const lowAccount = await billing.accounts.personal(lowUser);
    await billing.accounts.setAlertSettings(lowAccount.id, { low_balance_threshold_credits: 100 }, { as: { userId: lowUser } });
    const meeting = await MeetingRecording.start(billing, {
      context: "personal",
      captureSource: "desktop",
      userId: lowUser,
      meetingId: `low-${lowUser}`,
      initialMinutes: 30,
    });
    await meeting.finish({ mic: 30 * 60 });

    // A declined start.
    const broke = snowflake();
    await touchPersonalAllowance(billing, broke);
    const brokeAccount = await billing.accounts.personal(broke);
    await holdAllBut(server, billing, brokeAccount.id, 0, { userId: broke });
    await assert.rejects(
      billing.recordings.start(
        { context: "personal", capture_source: "desktop", requested_minutes: 15, meeting_id: `broke-${broke}` },
        { as: { userId: broke } },
      ),
      UsageDeclinedError,
    );

    await server.cli("deliver-notifications", "--once");
    const declined = await waitUntil("hold.declined", async () =>
      received.find((e) => e.known && e.type === "hold.declined" && e.data.user_id === broke),
    );
    const low = await waitUntil("wallet.balance_low", async () =>
      received.find((e) => e.known && e.type === "wallet.balance_low" && e.account_id === lowAccount.id),
    );

    assert.ok(declined.known && declined.type === "hold.declined");
    assert.match(declined.id, /^evt_/);
    assert.equal(declined.account_id, brokeAccount.id);
    assert.equal(declined.data.kind, "recording");
    assert.equal(declined.data.meeting_id, `broke-${broke}`);
    assert.equal(declined.data.code, "insufficient_credits");
    assert.equal(declined.data.requested_minutes, 15);
    assert.equal(declined.data.attempts[0]?.funding_source, "personal");
    assert.ok(Math.abs(declined.created - Date.now() / 1000) < 120);

    assert.ok(low.known && low.type === "wallet.balance_low");
    assert.equal(low.data.threshold_credits, 100);
    assert.equal(low.data.threshold_millicredits, 100_000);
    assert.equal(low.data.available_millicredits, 90_000);
    assert.equal(low.data.crossing, 1);
    assert.ok(statuses.every((s) => s === 204), `receiver answered ${statuses.join(",")}`);
  });

  test("the receiver refuses a forged, a replayed or an unsigned request", async () => {
    const body = JSON.stringify({ id: "evt_forged", type: "wallet.balance_low", created: 1, account_id: null, data: {} });
    const post = async (headers: Record<string, string>) =>
      (await fetch(receiverUrl, { method: "POST", headers: { "Content-Type": "application/json", ...headers }, body })).status;
    assert.equal(await post({ "Chronote-Signature": signPayload(body, "whsec_someone_else") }), 400);
    assert.equal(await post({ "Chronote-Signature": signPayload(body, SECRET, Math.floor(Date.now() / 1000) - 3600) }), 400);
    assert.equal(await post({}), 400);
    assert.equal(await post({ "Chronote-Signature": signPayload(body, SECRET) }), 204);
    assert.ok(received.some((e) => e.id === "evt_forged"));
  });
});

describe("the signature against the server's own signing code", () => {
  const body = '{"account_id":"acct_1","created":1795000000,"data":{"crossing":1},"id":"evt_1","type":"wallet.balance_low"}';

  test("the server signs, the client verifies; the client signs, the server verifies", async () => {
    const now = Math.floor(Date.now() / 1000);
    const { stdout } = await run(pythonPath(), [
      "-c",
      "import sys; from chronote_billing.notifications.signing import sign; print(sign(sys.argv[1].encode(), sys.argv[2], int(sys.argv[3])))",
      body,
      SECRET,
      String(now),
    ]);
    const header = stdout.trim();
    const event = constructEvent(body, header, SECRET);
    assert.ok(event.known && event.type === "wallet.balance_low");
    assert.throws(() => verifySignature(body + " ", header, SECRET), WebhookVerificationError);

    const ours = signPayload(Buffer.from(body), SECRET, now);
    assert.equal(ours, header, "the same bytes, secret and time give the same header");
    await run(pythonPath(), [
      "-c",
      "import sys; from chronote_billing.notifications.signing import verify_signature; verify_signature(sys.argv[1].encode(), sys.argv[2], sys.argv[3])",
      body,
      ours,
      SECRET,
    ]);
  });
});
