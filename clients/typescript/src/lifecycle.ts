// The meeting lifecycle (decision 0053): start a recording (full or partial budget), keep the
// hold ahead of the meeting from the heartbeat Chronote already beats every 10 seconds, report
// when the meeting must stop, finish with seconds per source, or cancel, or fail. Uploads are
// the same with a hold sized from the file and settled at the probed duration.
//
// Failure modes, each tested against a real server:
// - the service is unreachable during a heartbeat: the meeting goes on within what is already
//   held (the beat says `unreachable`), the next beat retries the same extension under the same
//   key, and when the held time runs out first the beat says `stop`;
// - an extension is declined: what is held stays held, the budget becomes final and the beat
//   reports `stopAt`, the end of the held time; no further extension is tried unless asked;
// - a duplicate finish (a retry, a second process): the same figures return the settled
//   recording, charged once; other figures are refused (`recording_already_settled`, or
//   `idempotency_conflict` for the same key), never charged again.
import type { ChronoteBillingClient } from "./client.js";
import { ChronoteBillingError, ServiceUnreachableError, UsageDeclinedError, refuse } from "./errors.js";
import type { RecordingView } from "./schema.js";
import { type Actor, type RetryPolicy, idempotencyKey } from "./transport.js";
import { type CaptureSource, type UsageContext, checkMinutes, checkSecondsBySource } from "./validate.js";

/** Heartbeat calls must end before the next beat: fewer, shorter attempts than the default. */
export const HEARTBEAT_RETRY: Readonly<Partial<RetryPolicy>> = Object.freeze({
  maxAttempts: 3,
  timeoutMs: 2_500,
  baseDelayMs: 200,
  maxDelayMs: 1_000,
  maxRetryAfterMs: 2_000,
});

const MINUTE = 60_000;

/** Why the time budget of a recording can grow no more. */
export type FinalReason =
  /** The payer approved less than asked (start or extension with allowPartial). */
  | "partial"
  /** An extension was declined (no credits, cap reached). */
  | "declined"
  /** The payer's longest recording is reached. */
  | "max_length";

export type HeartbeatOutcome =
  /** Enough is held ahead of the meeting; nothing was sent. */
  | "enough_held"
  | "extended"
  /** Extended by less than asked: the budget is now final. */
  | "extended_partially"
  | "declined"
  | "max_length"
  /** The budget was already final; nothing was sent. */
  | "budget_final"
  /** The service did not answer (after retries): the hold still covers `minutesLeft`. */
  | "unreachable"
  /** The server answered with an unexpected error; treated like `unreachable`. */
  | "error"
  /** The recording is no longer open (settled elsewhere, expired): stop. */
  | "closed";

export interface Heartbeat {
  /** Keep recording, or stop now. */
  action: "continue" | "stop";
  outcome: HeartbeatOutcome;
  /** Minutes of held time left at this beat (negative once past it). */
  minutesLeft: number;
  /** End of the held time. */
  holdEndsAt: Date;
  /** When the meeting must stop, once the budget is final; null while it can still grow. */
  stopAt: Date | null;
  recording: RecordingView;
  /** The error behind `declined`, `max_length`, `unreachable`, `error` or `closed`. */
  error?: ChronoteBillingError | ServiceUnreachableError;
}

export interface LifecycleTuning {
  /** Minutes added per extension (default 15). */
  extendBy?: number;
  /** Extend when fewer held minutes than this are left (default 5; beats are 10 s apart). */
  extendWhenMinutesLeft?: number;
  /** Extensions approve what is available rather than declining (default true). */
  extendAllowPartial?: boolean;
  /** Retry policy of heartbeat calls (default HEARTBEAT_RETRY). */
  heartbeatRetry?: Partial<RetryPolicy>;
  /** Milliseconds since the epoch (tests move it). */
  clock?: () => number;
}

export interface MeetingStart extends LifecycleTuning {
  context: UsageContext;
  captureSource: Exclude<CaptureSource, "upload">;
  /**
   * The Discord user starting the recording; later calls act for them unless told otherwise.
   * Omitted only with `autoRecord`.
   */
  userId?: string;
  /**
   * A server's auto-recorded meeting: nobody started it, the key's `recordings:auto` scope
   * does (decision 0029); its managers can act on it too.
   */
  autoRecord?: boolean;
  /** Guilds where that user has Manage Server, as checked with Discord. */
  manageGuilds?: readonly string[];
  /** Server meetings: the guild. */
  guildId?: string;
  /** Chronote's meeting id: attribution, sharing and the default idempotency keys use it. */
  meetingId: string;
  /** Minutes held at the start (default 30). */
  initialMinutes?: number;
  /** Approve what is available instead of declining: a known, shorter budget (default false). */
  allowPartial?: boolean;
  /** Personal work only: 'personal' or an authorization id the user holds. */
  fundingSource?: string;
  /** Default `meeting:<meetingId>:start`; give another for a second recording of one meeting. */
  idempotencyKey?: string;
  signal?: AbortSignal;
}

export interface LifecycleCallOptions {
  /** Act for someone else than the starter (server meetings: a user with Manage Server there). */
  as?: Actor | null;
  signal?: AbortSignal;
}

/** One recording in progress, from its hold to its settlement. */
export class MeetingRecording {
  /** The last state the server answered with. */
  recording: RecordingView;
  /** When the recording started, by the clock of this process (ms since the epoch). */
  readonly startedAt: number;
  /** Who the calls are made for; null for an auto-recorded server meeting. */
  readonly actor: Actor | null;
  /** Set once the budget can grow no more. */
  finalReason: FinalReason | null = null;
  private readonly client: ChronoteBillingClient;
  private readonly tuning: Required<Omit<LifecycleTuning, "heartbeatRetry">> & { heartbeatRetry: Partial<RetryPolicy> };
  private inFlight: Promise<Heartbeat> | null = null;
  /** The server said the recording is no longer open (settled elsewhere, or its hold expired). */
  private closed = false;

  protected constructor(
    client: ChronoteBillingClient,
    recording: RecordingView,
    actor: Actor | null,
    startedAt: number,
    tuning: LifecycleTuning,
  ) {
    this.client = client;
    this.recording = recording;
    this.actor = actor;
    this.startedAt = startedAt;
    this.tuning = {
      extendBy: checkMinutes(tuning.extendBy ?? 15, "extendBy"),
      extendWhenMinutesLeft: tuning.extendWhenMinutesLeft ?? 5,
      extendAllowPartial: tuning.extendAllowPartial ?? true,
      heartbeatRetry: tuning.heartbeatRetry ?? HEARTBEAT_RETRY,
      clock: tuning.clock ?? Date.now,
    };
    if (recording.partial) this.finalReason = "partial";
    else if (recording.approved_minutes >= recording.max_minutes) this.finalReason = "max_length";
  }

  /**
   * Place the hold for a new recording. Throws `UsageDeclinedError` (with `attempts`) when no
   * payer can cover it, `ValidationError` before sending for what the server would refuse.
   */
  static async start(client: ChronoteBillingClient, start: MeetingStart): Promise<MeetingRecording> {
    const clock = start.clock ?? Date.now;
    const startedAt = clock();
    const actor = actorOf(start);
    const key = start.idempotencyKey ?? idempotencyKey("meeting", start.meetingId, "start");
    const recording = await client.recordings.start(
      {
        context: start.context,
        capture_source: start.captureSource,
        guild_id: start.guildId ?? null,
        meeting_id: start.meetingId,
        requested_minutes: start.initialMinutes ?? 30,
        funding_source: start.fundingSource ?? null,
        allow_partial: start.allowPartial ?? false,
      },
      { as: actor, idempotencyKey: key, ...(start.signal ? { signal: start.signal } : {}) },
    );
    const current = await currentState(client, recording, actor, key);
    return new MeetingRecording(client, current, actor, startedAt, start);
  }

  /**
   * Pick up a recording another process started (after a restart): its state is read from the
   * server, its start time is the server's unless given.
   */
  static async resume(
    client: ChronoteBillingClient,
    recordingId: string,
    actor: Actor | null,
    tuning: LifecycleTuning & { startedAt?: number } = {},
  ): Promise<MeetingRecording> {
    const recording = await client.recordings.get(recordingId, { as: actor });
    const startedAt = tuning.startedAt ?? Date.parse(recording.created_at);
    return new MeetingRecording(client, recording, actor, startedAt, tuning);
  }

  get id(): string {
    return this.recording.id;
  }

  /** End of the held time: the start plus the approved minutes. */
  get holdEndsAt(): Date {
    return new Date(this.startedAt + this.recording.approved_minutes * MINUTE);
  }

  /** When the meeting must stop, once the budget is final; null while it can still grow. */
  get stopAt(): Date | null {
    return this.finalReason === null ? null : this.holdEndsAt;
  }

  /** Held minutes left now (negative once past the held time). */
  minutesLeft(now: number = this.tuning.clock()): number {
    return (this.holdEndsAt.getTime() - now) / MINUTE;
  }

  /**
   * Call on every beat of the meeting (Chronote beats every 10 s). Extends the hold when the held
   * time left falls under the threshold. Never throws for what the service answers: the result
   * says whether to go on, and when the meeting must stop. Overlapping calls share one beat.
   */
  heartbeat(options: LifecycleCallOptions = {}): Promise<Heartbeat> {
    if (this.inFlight === null) {
      this.inFlight = this.beat(options).finally(() => {
        this.inFlight = null;
      });
    }
    return this.inFlight;
  }

  /**
   * Ask for more minutes now, whatever the threshold (e.g. after the payer bought credits, to
   * lift a final budget). Throws what the server answers, like the plain client.
   */
  async extend(minutes: number = this.tuning.extendBy, options: LifecycleCallOptions = {}): Promise<RecordingView> {
    return this.extendWith(checkMinutes(minutes, "additional_minutes"), options);
  }

  /**
   * Settle: charge the wall-clock minutes of the longest source, rounded up once; the rest of the
   * hold is released. Safe to repeat with the same figures (one charge); other figures are
   * refused with `recording_already_settled`.
   */
  async finish(secondsBySource: Record<string, number>, options: LifecycleCallOptions = {}): Promise<RecordingView> {
    const seconds = checkSecondsBySource(secondsBySource);
    const key = idempotencyKey("recording", this.id, "finish");
    const recording = await this.client.recordings.finish(
      this.id,
      { seconds_by_source: seconds },
      { as: options.as ?? this.actor, idempotencyKey: key, ...(options.signal ? { signal: options.signal } : {}) },
    );
    this.recording = recording;
    assertSettledWith(recording, seconds, key);
    return recording;
  }

  /** The user stopped before anything worth charging: the hold is released. Safe to repeat. */
  async cancel(options: LifecycleCallOptions = {}): Promise<RecordingView> {
    this.recording = await this.client.recordings.cancel(this.id, {
      as: options.as ?? this.actor,
      idempotencyKey: idempotencyKey("recording", this.id, "cancel"),
      ...(options.signal ? { signal: options.signal } : {}),
    });
    return this.recording;
  }

  /** Processing failed on Chronote's side: the hold is released, nothing is charged. Safe to repeat. */
  async fail(options: LifecycleCallOptions = {}): Promise<RecordingView> {
    this.recording = await this.client.recordings.fail(this.id, {
      as: options.as ?? this.actor,
      idempotencyKey: idempotencyKey("recording", this.id, "fail"),
      ...(options.signal ? { signal: options.signal } : {}),
    });
    return this.recording;
  }

  private async beat(options: LifecycleCallOptions): Promise<Heartbeat> {
    if (this.closed || this.recording.status !== "open") return this.report("closed");
    const now = this.tuning.clock();
    if (this.minutesLeft(now) >= this.tuning.extendWhenMinutesLeft) return this.report("enough_held");
    if (this.finalReason !== null) return this.report("budget_final");
    const room = this.recording.max_minutes - this.recording.approved_minutes;
    if (room <= 0) {
      this.finalReason = "max_length";
      return this.report("max_length");
    }
    const minutes = Math.min(this.tuning.extendBy, room);
    const before = this.recording.approved_minutes;
    try {
      await this.extendWith(minutes, options, this.tuning.heartbeatRetry);
    } catch (error) {
      return this.afterFailedExtension(error);
    }
    const added = this.recording.approved_minutes - before;
    if (added >= minutes) return this.report("extended");
    return this.report(added > 0 ? "extended_partially" : "declined");
  }

  private async extendWith(
    minutes: number,
    options: LifecycleCallOptions,
    retry?: Partial<RetryPolicy>,
  ): Promise<RecordingView> {
    const allowPartial = this.tuning.extendAllowPartial;
    const before = this.recording.approved_minutes;
    const recording = await this.client.recordings.extend(
      this.id,
      { additional_minutes: minutes, allow_partial: allowPartial },
      {
        as: options.as ?? this.actor,
        // The key names the state it extends from, so a retry (or a second process resuming from
        // the same state) extends once, and the next extension is a new request.
        idempotencyKey: idempotencyKey("recording", this.id, "extend", `${before}+${minutes}`, allowPartial ? "p" : "f"),
        ...(retry ? { retry } : {}),
        ...(options.signal ? { signal: options.signal } : {}),
      },
    );
    this.recording = recording;
    const added = recording.approved_minutes - before;
    if (recording.approved_minutes >= recording.max_minutes) this.finalReason = "max_length";
    else if (added < minutes) this.finalReason = "partial";
    else this.finalReason = null;
    return recording;
  }

  private afterFailedExtension(error: unknown): Heartbeat {
    if (error instanceof ServiceUnreachableError) return this.report("unreachable", error);
    if (!(error instanceof ChronoteBillingError)) throw error;
    if (error.sent === false) throw error; // a bug of the caller, not a state of the meeting
    if (error.code === "recording_too_long") {
      this.finalReason = "max_length";
      return this.report("max_length", error);
    }
    if (error instanceof UsageDeclinedError) {
      this.finalReason = "declined";
      return this.report("declined", error);
    }
    if (["recording_not_open", "recording_expired", "hold_expired", "hold_already_settled", "not_found"].includes(error.code)) {
      this.closed = true;
      return this.report("closed", error);
    }
    return this.report("error", error);
  }

  private report(outcome: HeartbeatOutcome, error?: ChronoteBillingError | ServiceUnreachableError): Heartbeat {
    const minutesLeft = this.minutesLeft();
    const closed = this.closed || this.recording.status !== "open";
    return {
      action: closed || minutesLeft <= 0 ? "stop" : "continue",
      outcome,
      minutesLeft,
      holdEndsAt: this.holdEndsAt,
      stopAt: this.stopAt,
      recording: this.recording,
      ...(error ? { error } : {}),
    };
  }
}

export interface UploadStart {
  /** The Discord user uploading. */
  userId: string;
  /** Chronote's id of the uploaded meeting: the default keys and the attribution use it. */
  uploadId: string;
  /** Seconds the uploader declared; else the hold is sized from the file at a conservative bitrate. */
  declaredDurationSeconds?: number;
  fileSizeBytes?: number;
  /** 'personal' or an authorization id the user holds. */
  fundingSource?: string;
  /** Default `upload:<uploadId>:start`. */
  idempotencyKey?: string;
  signal?: AbortSignal;
}

/**
 * A personal upload: a hold sized from the declared duration (or the file size) before
 * processing, settled once at the probed duration. Processing retries call `settle` again with
 * the same figure and are charged once.
 */
export class UploadRecording {
  recording: RecordingView;
  readonly actor: Actor;
  private readonly client: ChronoteBillingClient;

  private constructor(client: ChronoteBillingClient, recording: RecordingView, actor: Actor) {
    this.client = client;
    this.recording = recording;
    this.actor = actor;
  }

  static async start(client: ChronoteBillingClient, start: UploadStart): Promise<UploadRecording> {
    const actor: Actor = { userId: start.userId };
    const key = start.idempotencyKey ?? idempotencyKey("upload", start.uploadId, "start");
    const recording = await client.recordings.start(
      {
        context: "personal",
        capture_source: "upload",
        meeting_id: start.uploadId,
        declared_duration_seconds: start.declaredDurationSeconds ?? null,
        file_size_bytes: start.fileSizeBytes ?? null,
        funding_source: start.fundingSource ?? null,
      },
      { as: actor, idempotencyKey: key, ...(start.signal ? { signal: start.signal } : {}) },
    );
    return new UploadRecording(client, await currentState(client, recording, actor, key), actor);
  }

  /** The processing worker picks up an upload by its recording id. */
  static async resume(client: ChronoteBillingClient, recordingId: string, actor: Actor): Promise<UploadRecording> {
    return new UploadRecording(client, await client.recordings.get(recordingId, { as: actor }), actor);
  }

  get id(): string {
    return this.recording.id;
  }

  /**
   * Charge the probed duration (at most what is held, after one attempt to hold the difference
   * on the same payer; a file longer than the plan allows is refused: status `failed`, nothing
   * charged). Safe to repeat with the same figure.
   */
  async settle(probedSeconds: number, options: LifecycleCallOptions = {}): Promise<RecordingView> {
    const seconds = checkSecondsBySource({ file: probedSeconds });
    const key = idempotencyKey("recording", this.id, "finish");
    this.recording = await this.client.recordings.finish(
      this.id,
      { seconds_by_source: seconds },
      { as: options.as ?? this.actor, idempotencyKey: key, ...(options.signal ? { signal: options.signal } : {}) },
    );
    assertSettledWith(this.recording, seconds, key);
    return this.recording;
  }

  /** Processing failed for good on Chronote's side: released, nothing charged. */
  async fail(options: LifecycleCallOptions = {}): Promise<RecordingView> {
    this.recording = await this.client.recordings.fail(this.id, {
      as: options.as ?? this.actor,
      idempotencyKey: idempotencyKey("recording", this.id, "fail"),
      ...(options.signal ? { signal: options.signal } : {}),
    });
    return this.recording;
  }
}

function actorOf(start: MeetingStart): Actor | null {
  if (start.autoRecord) {
    if (start.context !== "server" || start.userId !== undefined) {
      throw refuse(
        "validation_error",
        "Only a server meeting is auto-recorded, and it names no user.",
        start.context !== "server" ? "context" : "Chronote-Acting-User",
      );
    }
    return null;
  }
  if (start.userId === undefined) {
    throw refuse("permission_denied", "This request must name the acting Discord user.", "Chronote-Acting-User", 403);
  }
  return { userId: start.userId, ...(start.manageGuilds ? { manageGuilds: start.manageGuilds } : {}) };
}

/**
 * The recording as it is now. A start retried with its key answers the first response verbatim,
 * which may be older than the recording's state (extended since, or settled): read it once.
 * A settled one means the key belongs to an earlier recording of the same meeting.
 */
async function currentState(
  client: ChronoteBillingClient,
  started: RecordingView,
  actor: Actor | null,
  key: string,
): Promise<RecordingView> {
  const read = await client.recordings.get(started.id, { as: actor });
  // The payers tried before this one are told only by the start.
  const recording = { ...read, attempts: started.attempts ?? [] };
  if (recording.status === "open") return recording;
  throw new ChronoteBillingError(
    {
      code: "recording_not_open",
      title: "Recording already settled",
      detail:
        `The start key '${key}' belongs to recording ${recording.id}, which is ${recording.status}; ` +
        "a new recording of the same meeting needs a key of its own.",
      recording_id: recording.id,
      recording_status: recording.status,
    },
    409,
    { method: "POST", path: "/v1/recordings", idempotencyKey: key },
  );
}

/**
 * The server answers a finish of a settled recording with the settled record; when that record
 * holds other figures than ours, ours were not applied: say so as the server will.
 */
function assertSettledWith(recording: RecordingView, seconds: Record<string, number>, key: string): void {
  const settled = recording.seconds_by_source;
  if (settled == null || sameFigures(settled, seconds)) return;
  throw new ChronoteBillingError(
    {
      code: "recording_already_settled",
      title: "Recording already settled",
      detail: `Recording ${recording.id} was settled with other figures; this finish was not applied.`,
      recording_id: recording.id,
      seconds_by_source: settled,
    },
    409,
    { method: "POST", path: `/v1/recordings/${recording.id}/finish`, idempotencyKey: key },
  );
}

function sameFigures(a: Record<string, unknown>, b: Record<string, number>): boolean {
  const keys = Object.keys(b);
  return Object.keys(a).length === keys.length && keys.every((k) => a[k] === b[k]);
}
