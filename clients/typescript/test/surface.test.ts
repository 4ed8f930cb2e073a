// Every other operation Chronote's services call, against a real server with the local Stripe
// stand-in: checkout paid on its hosted page, plan change, cancellation and the customer portal;
// organizations, members, servers and authorizations; funding sources and entitlements;
// sharing and attribution; usage reports; alert and auto-recharge settings.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { type ChronoteBillingClient, MeetingRecording, isProblem } from "../src/index.js";
import { clientFor, waitUntil } from "./support/fixtures.js";
import { type BillingServer, snowflake, startServer } from "./support/server.js";

let server: BillingServer;
let billing: ChronoteBillingClient;

before(async () => {
  server = await startServer({ stripe: true });
  billing = clientFor(server);
});

after(async () => {
  await server?.stop();
});

/** Pay a Checkout session on the stand-in's hosted page with the always-succeeding test card. */
async function pay(url: string): Promise<void> {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ card: "4242424242424242", name: "Test Payer" }),
    redirect: "manual",
  });
  assert.equal(response.status, 303, await response.text());
}

describe("checkout and subscriptions", () => {
  test("a server plan: checkout paid, upgraded in place, portal opened, cancelled at period end", async () => {
    const manager = snowflake();
    const guild = snowflake();
    const as = { userId: manager, manageGuilds: [guild] };
    const account = await billing.accounts.server(guild, { as });
    assert.equal(account.kind, "server");
    const catalog = await billing.billing.catalog();
    assert.ok(catalog.plans.find((p) => p.id === "server_basic")?.prices.some((p) => p.lookup_key === "chronote_basic_monthly"));

    const checkout = await billing.billing.checkout(
      account.id,
      { plan: "server_basic", interval: "month", success_url: "https://chronote.gg/ok", cancel_url: "https://chronote.gg/no" },
      { as, idempotencyKey: `checkout:${guild}:server_basic` },
    );
    assert.equal(checkout.mode, "subscription");
    assert.ok(checkout.url?.startsWith(server.stripeUrl ?? "-"));
    const again = await billing.billing.checkout(
      account.id,
      { plan: "server_basic", interval: "month", success_url: "https://chronote.gg/ok", cancel_url: "https://chronote.gg/no" },
      { as, idempotencyKey: `checkout:${guild}:server_basic` },
    );
    assert.equal(again.id, checkout.id, "a retried checkout is the same session");
    await pay(checkout.url ?? "");
    const subscribed = await waitUntil("the subscription", async () => {
      const sub = await billing.billing.subscription(account.id, { as });
      return sub.plan === "server_basic" && sub.status === "active" ? sub : undefined;
    });
    assert.equal(subscribed.plan_source, "paid");

    const change = await billing.billing.changePlan(account.id, { plan: "server_pro", interval: "month" }, { as });
    assert.equal(change.effective, "now");
    assert.equal(change.from_plan, "server_basic");
    assert.equal(change.to_plan, "server_pro");

    const portal = await billing.billing.portalSession(account.id, { return_url: "https://chronote.gg/billing" }, { as });
    assert.ok(portal.url.startsWith(server.stripeUrl ?? "-"));
    assert.equal(portal.customer, checkout.customer);

    const cancelled = await billing.billing.cancelSubscription(account.id, { as });
    assert.equal(cancelled.cancel_at_period_end, true);

    // Without Manage Server on that guild, nothing of it can be bought or seen.
    const denied = await billing.billing.subscription(account.id, { as: { userId: manager } }).catch((e: unknown) => e);
    assert.ok(isProblem(denied, "permission_denied"));
  });

  test("an organization buys a credit pack and its wallet is funded once the payment is confirmed", async () => {
    const owner = snowflake();
    const org = await billing.orgs.create({ name: `Packs ${owner}` }, { as: { userId: owner } });
    const checkout = await billing.billing.checkout(
      org.billing_account_id,
      { pack: "credits_1000", success_url: "https://chronote.gg/ok" },
      { as: { userId: owner } },
    );
    assert.equal(checkout.mode, "payment");
    await pay(checkout.url ?? "");
    const balance = await waitUntil("the pack's credits", async () => {
      const b = await billing.accounts.balance(org.billing_account_id, { as: { userId: owner } });
      return b.available === 1_000_000 ? b : undefined;
    });
    assert.equal(balance.grants.length, 1);
    assert.equal((await billing.accounts.grants(org.billing_account_id, { as: { userId: owner } })).length, 1);

    const recharge = await billing.accounts.setAutoRecharge(
      org.billing_account_id,
      { enabled: true, threshold_credits: 200, pack_id: "credits_5000", monthly_limit_count: 2 },
      { as: { userId: owner } },
    );
    assert.equal(recharge.enabled, true);
    assert.equal((await billing.accounts.autoRecharge(org.billing_account_id, { as: { userId: owner } })).pack_id, "credits_5000");
  });
});

describe("organizations", () => {
  test("members, servers, authorizations and the audit log", async () => {
    const owner = snowflake();
    const admin = snowflake();
    const member = snowflake();
    const guild = snowflake();
    const as = { userId: owner };
    const org = await billing.orgs.create({ name: `Org ${owner}` }, { as });
    assert.equal((await billing.orgs.get(org.id, { as })).name, `Org ${owner}`);
    assert.equal((await billing.orgs.mine({ as }))[0]?.role, "owner");

    await billing.orgs.addMember(org.id, { user_id: admin, role: "member" }, { as });
    assert.equal((await billing.orgs.setRole(org.id, admin, "billing_admin", { as })).role, "billing_admin");
    await billing.orgs.addMember(org.id, { user_id: member }, { as: { userId: admin } });
    assert.deepEqual((await billing.orgs.members(org.id, { as })).map((m) => m.role).sort(), ["billing_admin", "member", "owner"]);

    const linked = await billing.orgs.linkServer(org.id, guild, { as: { userId: owner, manageGuilds: [guild] } });
    assert.equal(linked.guild_id, guild);
    assert.equal((await billing.orgs.servers(org.id, { as })).length, 1);

    const memberAuth = await billing.orgs.authorize(
      org.id,
      { subject_type: "member", subject_id: member, monthly_cap_credits: 100, capture_sources: ["desktop", "upload"] },
      { as },
    );
    const serverAuth = await billing.orgs.authorize(org.id, { subject_type: "server", subject_id: guild }, { as });
    assert.equal((await billing.orgs.authorizations(org.id, { as })).length, 2);
    const updated = await billing.authorizations.update(memberAuth.id, { monthly_cap_credits: 50 }, { as });
    assert.equal(updated.monthly_cap_credits, 50);
    assert.deepEqual(updated.capture_sources, ["desktop", "upload"], "fields not sent are unchanged");

    // The member sees the authorization among their funding sources, and can order them.
    const sources = await billing.fundingSources.list({ as: { userId: member } });
    assert.deepEqual(
      sources.map((s) => s.id),
      ["personal", memberAuth.id],
    );
    const ordered = await billing.fundingSources.setOrder([memberAuth.id], { as: { userId: member } });
    assert.equal(ordered[1]?.position, 1);
    // Any acting user sees the server's plan and limits; what is left, only its managers.
    const seen = await billing.entitlements.get({ context: "server", guildId: guild }, { as: { userId: member } });
    assert.equal(seen.plan, "server_free");
    assert.equal(seen.max_recording_minutes, 90);
    const ent = await billing.entitlements.get({ context: "server", guildId: guild }, { as: { userId: owner, manageGuilds: [guild] } });
    assert.equal(ent.funding_sources[1]?.id, serverAuth.id);
    const personalEnt = await billing.entitlements.get({ context: "personal" }, { as: { userId: member } });
    assert.equal(personalEnt.max_recording_minutes, 60);
    assert.equal(personalEnt.features.ask_meetings, 5);

    assert.equal((await billing.authorizations.revoke(serverAuth.id, { as })).status, "revoked");
    assert.equal((await billing.orgs.unlinkServer(org.id, guild, { as })).guild_id, guild);
    assert.equal((await billing.orgs.removeMember(org.id, member, { as })).user_id, member);
    const audit = await billing.orgs.audit(org.id, { limit: 50 }, { as });
    assert.ok(audit.length >= 8);
    assert.ok(audit.some((a) => a.action.includes("revoke")));
  });
});

describe("meetings and reports", () => {
  test("a personal meeting shared with a server moves no cost; usage reports group it", async () => {
    const owner = snowflake();
    const guild = snowflake();
    const meetingId = `shared-${owner}`;
    const meeting = await MeetingRecording.start(billing, {
      context: "personal",
      captureSource: "desktop",
      userId: owner,
      meetingId,
      initialMinutes: 10,
    });
    await meeting.finish({ mic: 9 * 60 + 1 });
    const shared = await billing.meetings.share(meetingId, guild, { as: { userId: owner } });
    assert.deepEqual(shared.shared_with_guilds, [guild]);
    assert.equal(shared.payer_kind, "personal");
    const attribution = await billing.meetings.attribution(meetingId, { as: { userId: owner } });
    assert.equal(attribution.payer_account_id, meeting.recording.payer_account_id);

    const account = meeting.recording.payer_account_id;
    const report = await billing.reports.usage(account, { groupBy: "source" }, { as: { userId: owner } });
    assert.equal(report.total_charged, 10_000);
    assert.equal(report.rows[0]?.key, "desktop");
    const csv = await billing.reports.usageCsv(account, {}, { as: { userId: owner } });
    assert.match(csv.split("\n")[0] ?? "", /,/);
    assert.ok(csv.includes("desktop"), csv);

    const statement = await billing.accounts.statement(account, { limit: 1 }, { as: { userId: owner } });
    assert.equal(statement.data.length, 1);
    const next = await billing.accounts.statement(account, { limit: 50, startingAfter: statement.next_cursor ?? undefined }, { as: { userId: owner } });
    const firstPage = new Set(statement.data.map((l) => l.id));
    assert.ok(next.data.length > 0 && next.data.every((l) => !firstPage.has(l.id)), "the next page goes on after the cursor");
    const log = await billing.accounts.transferLog(account, { limit: 2 }, { as: { userId: owner } });
    assert.equal(log.data.length, 2);
    const runway = await billing.accounts.runway(account, { as: { userId: owner } });
    assert.equal(runway.account_id, account);
    assert.equal((await billing.accounts.invoices(account, { as: { userId: owner } })).data.length, 0);
    const mine = JSON.parse(await billing.people.export(owner, "json", { as: { userId: owner } })) as { user_id?: string };
    assert.ok(JSON.stringify(mine).includes(owner));
    assert.equal((await billing.accounts.get(account, { as: { userId: owner } })).id, account);

    const alerts = await billing.accounts.setAlertSettings(account, { low_balance_threshold_credits: 10 }, { as: { userId: owner } });
    assert.equal(alerts.low_balance_threshold_credits, 10);
    assert.equal((await billing.accounts.alertSettings(account, { as: { userId: owner } })).low_balance_threshold_credits, 10);
  });
});
