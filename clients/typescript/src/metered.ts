// Metered events: a chat-to-speech message and an Ask question, charged at once by the rate card
// (50 and 500 millicredits today) to the payer of the context where the work happens. The event
// id is the idempotency: derived here from Chronote's own message or question id, so however
// often a charge is retried, it is charged once.
import type { ChronoteBillingClient } from "./client.js";
import type { RecordingView } from "./schema.js";
import type { RetryPolicy } from "./transport.js";
import type { UsageContext } from "./validate.js";

export interface MeteredWork {
  /** The Discord user doing the work (who sent the message, who asked). */
  userId: string;
  /** Where the work happens: a server pays for work in it, even on a shared personal meeting. */
  context: UsageContext;
  guildId?: string;
  /** The meeting the work is about, if any. */
  meetingId?: string;
  /** Personal work only: 'personal' or an authorization id the user holds. */
  fundingSource?: string;
  signal?: AbortSignal;
  retry?: Partial<RetryPolicy>;
}

async function charge(
  client: ChronoteBillingClient,
  work: MeteredWork,
  eventType: "chat_to_speech_message" | "ask_question",
  eventId: string,
): Promise<RecordingView> {
  return client.events.charge(
    {
      event_id: eventId,
      event_type: eventType,
      context: work.context,
      guild_id: work.guildId ?? null,
      meeting_id: work.meetingId ?? null,
      funding_source: work.fundingSource ?? null,
    },
    {
      as: { userId: work.userId },
      ...(work.signal ? { signal: work.signal } : {}),
      ...(work.retry ? { retry: work.retry } : {}),
    },
  );
}

/**
 * Charge one chat-to-speech message before it is played. A decline (`UsageDeclinedError`:
 * `feature_limit_reached` when the plan's monthly messages are used, `insufficient_credits`...)
 * means: do not play it. There is nothing to release if playback is dropped afterwards.
 */
export function chargeChatToSpeech(
  client: ChronoteBillingClient,
  work: MeteredWork & { messageId: string },
): Promise<RecordingView> {
  return charge(client, work, "chat_to_speech_message", `tts:${work.messageId}`);
}

/** Charge one Ask question before answering it; a decline means: do not answer. */
export function chargeAskQuestion(
  client: ChronoteBillingClient,
  work: MeteredWork & { questionId: string },
): Promise<RecordingView> {
  return charge(client, work, "ask_question", `ask:${work.questionId}`);
}
