// What the server would refuse, refused before sending, with the server's own codes and fields
// (src/chronote_billing/usage/service.py, accounts/service.py). Only rules that need no state
// are checked here; everything else is the server's answer.
import { refuse } from "./errors.js";

const SNOWFLAKE = /^[0-9]{15,21}$/;
export const CAPTURE_SOURCES = ["discord_voice", "desktop", "web", "mobile", "quick_capture", "upload"] as const;
export const PERSONAL_SOURCES = ["desktop", "web", "mobile", "quick_capture", "upload"] as const;
export const SERVER_SOURCES = ["discord_voice"] as const;
export const METERED_EVENT_TYPES = ["chat_to_speech_message", "ask_question"] as const;
/** No plan records longer than a day in one request. */
export const MAX_MINUTES_PER_REQUEST = 24 * 60;
export const MAX_SOURCES_PER_RECORDING = 4;

export type CaptureSource = (typeof CAPTURE_SOURCES)[number];
export type MeteredEventType = (typeof METERED_EVENT_TYPES)[number];
export type UsageContext = "personal" | "server";

/** A Discord id (15 to 21 digits), trimmed as the server trims it. */
export function checkSnowflake(value: unknown, field: string): string {
  const text = String(value ?? "").trim();
  if (!SNOWFLAKE.test(text)) {
    throw refuse("validation_error", `${field} must be a Discord id (a 15-21 digit number), got '${text}'.`, field);
  }
  return text;
}

function isWhole(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value);
}

/** Minutes to hold or add: a positive whole number, at most a day. */
export function checkMinutes(value: unknown, field: string): number {
  if (!isWhole(value) || value <= 0) {
    throw refuse("validation_error", `${field} must be a positive whole number of minutes.`, field);
  }
  if (value > MAX_MINUTES_PER_REQUEST) {
    // Refused at the server's edge, before any plan is looked at: a validation error there too.
    throw refuse("validation_error", `${field} must be at most ${MAX_MINUTES_PER_REQUEST} minutes.`, field);
  }
  return value;
}

function checkPositive(value: unknown, field: string, maximum: number): number {
  if (!isWhole(value) || value <= 0) {
    throw refuse("validation_error", `${field} must be a positive whole number.`, field);
  }
  if (value > maximum) throw refuse("validation_error", `${field} must be at most ${maximum}.`, field);
  return value;
}

/** Seconds per audio source: 1 to 4 sources, names of 1-32 characters, whole seconds up to a day. */
export function checkSecondsBySource(value: unknown): Record<string, number> {
  const field = "seconds_by_source";
  if (typeof value !== "object" || value === null || Array.isArray(value) || Object.keys(value).length === 0) {
    throw refuse("validation_error", "seconds_by_source must name at least one source.", field);
  }
  const entries = Object.entries(value as Record<string, unknown>);
  if (entries.length > MAX_SOURCES_PER_RECORDING) {
    throw refuse("validation_error", `A recording has at most ${MAX_SOURCES_PER_RECORDING} sources.`, field);
  }
  const cleaned: Record<string, number> = {};
  for (const [name, seconds] of entries) {
    if (name.length < 1 || name.length > 32) {
      throw refuse("validation_error", "Source names are 1 to 32 characters.", field);
    }
    if (!isWhole(seconds) || seconds < 0 || seconds > MAX_MINUTES_PER_REQUEST * 60) {
      // The server names the source's own field, as its edge validates each value.
      throw refuse(
        "validation_error",
        `Seconds for source '${name}' must be a whole number from 0 to ${MAX_MINUTES_PER_REQUEST * 60}.`,
        `${field}.${name}`,
      );
    }
    cleaned[name] = seconds;
  }
  return cleaned;
}

function checkContext(context: unknown): UsageContext {
  if (context !== "personal" && context !== "server") {
    throw refuse("validation_error", `context must be 'personal' or 'server', not '${String(context)}'.`, "context");
  }
  return context;
}

export interface RecordingStartShape {
  context: string;
  capture_source: string;
  guild_id?: string | null;
  meeting_id?: string | null;
  requested_minutes?: number | null;
  funding_source?: string | null;
  allow_partial?: boolean;
  declared_duration_seconds?: number | null;
  file_size_bytes?: number | null;
}

/** The stateless checks of `POST /v1/recordings` and `/v1/usage/quote`. */
export function checkRecordingStart(body: RecordingStartShape): void {
  const context = checkContext(body.context);
  const source = body.capture_source;
  if (!(CAPTURE_SOURCES as readonly string[]).includes(source)) {
    throw refuse(
      "unknown_capture_source",
      `Unknown capture source '${source}'; expected one of ${CAPTURE_SOURCES.join(", ")}.`,
      "capture_source",
    );
  }
  const expected: readonly string[] = context === "server" ? SERVER_SOURCES : PERSONAL_SOURCES;
  if (!expected.includes(source)) {
    throw refuse(
      "capture_source_context_mismatch",
      `A ${context} recording comes from ${expected.join(", ")}, not ${source}.`,
      "capture_source",
    );
  }
  if (context === "server") {
    if (!body.guild_id) throw refuse("validation_error", "A server meeting needs its guild_id.", "guild_id");
    if (body.funding_source != null && body.funding_source !== "server") {
      throw refuse(
        "funding_source_not_allowed",
        "Server meetings are paid by the server's chain; a funding source cannot be picked.",
        "funding_source",
      );
    }
  }
  if (body.guild_id) checkSnowflake(body.guild_id, "guild_id");
  checkMeetingId(body.meeting_id);
  if (source === "upload") {
    if (body.requested_minutes != null) {
      throw refuse(
        "validation_error",
        "Uploads are sized from declared_duration_seconds or file_size_bytes, not requested_minutes.",
        "requested_minutes",
      );
    }
    if (body.declared_duration_seconds == null && body.file_size_bytes == null) {
      throw refuse(
        "validation_error",
        "An upload needs declared_duration_seconds or file_size_bytes.",
        "declared_duration_seconds",
      );
    }
    if (body.declared_duration_seconds != null) {
      checkPositive(body.declared_duration_seconds, "declared_duration_seconds", MAX_MINUTES_PER_REQUEST * 60);
    }
    if (body.file_size_bytes != null) checkPositive(body.file_size_bytes, "file_size_bytes", 10 ** 12);
  } else {
    if (body.declared_duration_seconds != null || body.file_size_bytes != null) {
      throw refuse("validation_error", "Only uploads are sized from a duration or a file size.", "capture_source");
    }
    if (body.requested_minutes == null) {
      throw refuse("validation_error", "requested_minutes is required.", "requested_minutes");
    }
    checkMinutes(body.requested_minutes, "requested_minutes");
  }
}

export interface MeteredEventShape {
  event_id: string;
  event_type: string;
  context: string;
  guild_id?: string | null;
  meeting_id?: string | null;
  funding_source?: string | null;
}

/** The stateless checks of `POST /v1/usage/events`. */
export function checkMeteredEvent(body: MeteredEventShape): void {
  if (!(METERED_EVENT_TYPES as readonly string[]).includes(body.event_type)) {
    throw refuse(
      "validation_error",
      `Unknown metered event '${body.event_type}'; expected one of ${METERED_EVENT_TYPES.join(", ")}.`,
      "type",
    );
  }
  const context = checkContext(body.context);
  if (typeof body.event_id !== "string" || !body.event_id.trim() || body.event_id.length > 128) {
    throw refuse("validation_error", "event_id is required (1 to 128 characters).", "event_id");
  }
  if (context === "server") {
    if (!body.guild_id) throw refuse("validation_error", "Work in a server needs its guild_id.", "guild_id");
    if (body.funding_source != null && body.funding_source !== "server") {
      throw refuse(
        "funding_source_not_allowed",
        "Work in a server is paid by the server's chain; a funding source cannot be picked.",
        "funding_source",
      );
    }
  }
  if (body.guild_id) checkSnowflake(body.guild_id, "guild_id");
  checkMeetingId(body.meeting_id);
}

function checkMeetingId(meetingId: string | null | undefined): void {
  if (meetingId != null && !(meetingId.trim().length >= 1 && meetingId.length <= 128)) {
    throw refuse("validation_error", "meeting_id must be 1 to 128 characters.", "meeting_id");
  }
}
