// Shared set-up steps of the integration tests, all through the real server.
import { type Actor, ChronoteBillingClient, type ClientOptions, idempotencyKey } from "../../src/index.js";
import type { BillingServer } from "./server.js";

export function clientFor(server: BillingServer, options: Partial<ClientOptions> = {}): ChronoteBillingClient {
  return new ChronoteBillingClient({ baseUrl: server.baseUrl, apiKey: server.apiKey, ...options });
}

/** A controllable clock for `MeetingRecording`: the meeting's minutes pass at once. */
export class FakeClock {
  constructor(public now: number = Date.now()) {}
  readonly read = (): number => this.now;
  advanceMinutes(minutes: number): void {
    this.now += minutes * 60_000;
  }
}

/**
 * The free monthly allowance is granted on first need: start and cancel a one-minute recording
 * so that it is in the wallet (and can be held away by `holdAllBut`).
 */
export async function touchPersonalAllowance(client: ChronoteBillingClient, userId: string): Promise<void> {
  const rec = await client.recordings.start(
    { context: "personal", capture_source: "desktop", requested_minutes: 1 },
    { as: { userId }, idempotencyKey: idempotencyKey("touch", userId) },
  );
  await client.recordings.cancel(rec.id, { as: { userId }, idempotencyKey: idempotencyKey("touch", userId, "cancel") });
}

export async function touchServerAllowance(client: ChronoteBillingClient, guildId: string, userId: string): Promise<void> {
  const rec = await client.recordings.start(
    { context: "server", capture_source: "discord_voice", guild_id: guildId, requested_minutes: 1 },
    { as: { userId }, idempotencyKey: idempotencyKey("touch", guildId) },
  );
  await client.recordings.cancel(rec.id, { as: { userId }, idempotencyKey: idempotencyKey("touch", guildId, "cancel") });
}

/**
 * Leave only `leave` millicredits available on an account by placing a raw ledger hold on the
 * rest, acting for someone who may manage that account.
 */
export async function holdAllBut(
  server: BillingServer,
  client: ChronoteBillingClient,
  accountId: string,
  leave: number,
  manager: Actor,
): Promise<void> {
  const { available } = await client.accounts.balance(accountId, { as: manager });
  if (available <= leave) return;
  const response = await fetch(`${server.baseUrl}/v1/accounts/${accountId}/holds`, {
    method: "POST",
    headers: {
      Authorization: `Bearer ${server.apiKey}`,
      "Content-Type": "application/json",
      "Idempotency-Key": idempotencyKey("drain", accountId, available, leave),
      "Chronote-Acting-User": manager.userId,
      ...(manager.manageGuilds ? { "Chronote-Manage-Guilds": manager.manageGuilds.join(",") } : {}),
    },
    body: JSON.stringify({ amount: available - leave, ttl_seconds: 3600, reason: "test: hold the rest away" }),
  });
  if (response.status !== 201) throw new Error(`drain hold: ${response.status} ${await response.text()}`);
}

export async function waitUntil<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
