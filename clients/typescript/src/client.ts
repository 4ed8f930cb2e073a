// The typed client: one method per /v1 operation Chronote's services call, grouped by what they
// are about. Bodies are the server's own shapes (snake_case, from the generated types); options
// carry the acting user, the idempotency key, a signal and retry overrides, per call.
import type {
  AccountLookup,
  AccountView,
  AlertSettingsUpdate,
  AlertSettingsView,
  AttributionView,
  AuditEntryView,
  AuthorizationCreate,
  AuthorizationUpdate,
  AuthorizationView,
  AutoRechargeUpdate,
  AutoRechargeView,
  BalanceView,
  BillingDocumentList,
  CancelView,
  CatalogView,
  CheckoutRequest,
  CheckoutView,
  Decision,
  EconomicStatementPage,
  EntitlementsView,
  FundingSourceView,
  GrantView,
  MemberAdd,
  MembershipView,
  MemberView,
  MeteredEvent,
  OrgCreate,
  OrgRole,
  OrgView,
  PlanChangeRequest,
  PlanChangeView,
  PortalRequest,
  PortalSessionView,
  RecordingExtend,
  RecordingFinish,
  RecordingStart,
  RecordingView,
  RunwayView,
  ServerView,
  StatementPage,
  SubscriptionView,
  UsageGroupBy,
  UsageReport,
} from "./schema.js";
import {
  type ActingCallOptions,
  type CallOptions,
  type RecordingCallOptions,
  type CallSpec,
  type SendInit,
  type SendResult,
  Transport,
  type TransportOptions,
} from "./transport.js";
import {
  type UsageContext,
  checkMeteredEvent,
  checkMinutes,
  checkRecordingStart,
  checkSecondsBySource,
  checkSnowflake,
} from "./validate.js";

export type ClientOptions = TransportOptions;

type Send<T> = (init: SendInit) => Promise<SendResult<T>>;

/** The common base of the groups: each call goes through the one transport. */
class Group {
  constructor(protected readonly t: Transport) {}

  protected read<T>(path: string, options: CallOptions | undefined, send: Send<T>): Promise<T> {
    return this.t.call<T>({ ...options, method: "GET", path, write: false } as CallSpec, send);
  }

  protected write<T>(method: string, path: string, options: CallOptions | undefined, send: Send<T>): Promise<T> {
    return this.t.call<T>({ ...options, method, path, write: true } as CallSpec, send);
  }
}

export interface StatementQuery {
  limit?: number;
  /** Cursor: the last line id of the previous page (its `next_cursor`). */
  startingAfter?: string;
}

export interface TransferLogQuery {
  limit?: number;
  /** Cursor: the last transfer id of the previous page. */
  startingAfter?: number;
}

export interface UsageQuery {
  groupBy?: UsageGroupBy;
  /** ISO 8601 date-times. */
  since?: string;
  until?: string;
}

/** Billing accounts, balances, statements and their alert and auto-recharge settings. */
export class Accounts extends Group {
  /** Find or create the billing account of a payer (naturally idempotent, no key needed). */
  async resolve(body: AccountLookup, options: ActingCallOptions): Promise<AccountView> {
    if (body.kind !== "organization") checkSnowflake(body.owner_ref, "owner_ref");
    return this.t.call<AccountView>({ ...options, method: "POST", path: "/v1/accounts", write: false }, (init) =>
      this.t.api.POST("/v1/accounts", { body, ...init }),
    );
  }

  /** The account of a Discord user's personal payer, by default acting for that user. */
  async personal(userId: string, options?: Partial<ActingCallOptions>): Promise<AccountView> {
    return this.resolve({ kind: "personal", owner_ref: userId }, { ...options, as: options?.as ?? { userId } });
  }

  /** The account of a Discord server (acting for a user with Manage Server on it). */
  async server(guildId: string, options: ActingCallOptions): Promise<AccountView> {
    return this.resolve({ kind: "server", owner_ref: guildId }, options);
  }

  async get(accountId: string, options: ActingCallOptions): Promise<AccountView> {
    return this.read(`/v1/accounts/${accountId}`, options, (init) =>
      this.t.api.GET("/v1/accounts/{account_id}", { params: { path: { account_id: accountId } }, ...init }),
    );
  }

  /** Available, held and per-grant balance, in millicredits. */
  async balance(accountId: string, options: ActingCallOptions): Promise<BalanceView> {
    return this.read(`/v1/accounts/${accountId}/balance`, options, (init) =>
      this.t.api.GET("/v1/accounts/{account_id}/balance", { params: { path: { account_id: accountId } }, ...init }),
    );
  }

  /** The statement a person reads: one line per charge, purchase, expiry, refund or freeze,
   * newest first, a page at a time; holds in progress are reported beside it as reserved. */
  async statement(accountId: string, query: StatementQuery, options: ActingCallOptions): Promise<EconomicStatementPage> {
    return this.read(`/v1/accounts/${accountId}/statement`, options, (init) =>
      this.t.api.GET("/v1/accounts/{account_id}/statement", {
        params: {
          path: { account_id: accountId },
          query: {
            limit: query.limit,
            starting_after: query.startingAfter,
          },
        },
        ...init,
      }),
    );
  }

  /** The ledger's transfer log (operators): every transfer, pending and void ones included. */
  async transferLog(accountId: string, query: TransferLogQuery, options: ActingCallOptions): Promise<StatementPage> {
    return this.read(`/v1/accounts/${accountId}/ledger`, options, (init) =>
      this.t.api.GET("/v1/accounts/{account_id}/ledger", {
        params: {
          path: { account_id: accountId },
          query: { limit: query.limit, starting_after: query.startingAfter },
        },
        ...init,
      }),
    );
  }

  /** Invoices and receipts, newest first, as Stripe has them. */
  async invoices(accountId: string, options: ActingCallOptions): Promise<BillingDocumentList> {
    return this.read(`/v1/accounts/${accountId}/invoices`, options, (init) =>
      this.t.api.GET("/v1/accounts/{account_id}/invoices", { params: { path: { account_id: accountId } }, ...init }),
    );
  }

  /** When the credits run out at the last 14 days' pace (and, for an organization, when each
   * authorization reaches its cap); a cold start gives no date. */
  async runway(accountId: string, options: ActingCallOptions): Promise<RunwayView> {
    return this.read(`/v1/accounts/${accountId}/runway`, options, (init) =>
      this.t.api.GET("/v1/accounts/{account_id}/runway", { params: { path: { account_id: accountId } }, ...init }),
    );
  }

  async grants(accountId: string, options: ActingCallOptions): Promise<GrantView[]> {
    return this.read(`/v1/accounts/${accountId}/grants`, options, (init) =>
      this.t.api.GET("/v1/accounts/{account_id}/grants", { params: { path: { account_id: accountId } }, ...init }),
    );
  }

  async alertSettings(accountId: string, options: ActingCallOptions): Promise<AlertSettingsView> {
    return this.read(`/v1/accounts/${accountId}/alert-settings`, options, (init) =>
      this.t.api.GET("/v1/accounts/{account_id}/alert-settings", {
        params: { path: { account_id: accountId } },
        ...init,
      }),
    );
  }

  /** Set (or, with null, turn off) the low-balance alert: Chronote gets `wallet.balance_low`. */
  async setAlertSettings(accountId: string, body: AlertSettingsUpdate, options: ActingCallOptions): Promise<AlertSettingsView> {
    return this.write("PUT", `/v1/accounts/${accountId}/alert-settings`, options, (init) =>
      this.t.api.PUT("/v1/accounts/{account_id}/alert-settings", {
        params: { path: { account_id: accountId } },
        body,
        ...init,
      }),
    );
  }

  async autoRecharge(accountId: string, options: ActingCallOptions): Promise<AutoRechargeView> {
    return this.read(`/v1/accounts/${accountId}/auto-recharge`, options, (init) =>
      this.t.api.GET("/v1/accounts/{account_id}/auto-recharge", { params: { path: { account_id: accountId } }, ...init }),
    );
  }

  async setAutoRecharge(accountId: string, body: AutoRechargeUpdate, options: ActingCallOptions): Promise<AutoRechargeView> {
    return this.write("PUT", `/v1/accounts/${accountId}/auto-recharge`, options, (init) =>
      this.t.api.PUT("/v1/accounts/{account_id}/auto-recharge", {
        params: { path: { account_id: accountId } },
        body,
        ...init,
      }),
    );
  }
}

/** Recordings and uploads: a hold placed before capture, extended, then settled once. */
export class Recordings extends Group {
  /** Who would pay and why, placing nothing. */
  async quote(body: RecordingStart, options: RecordingCallOptions): Promise<Decision> {
    checkRecordingStart(body);
    return this.t.call<Decision>({ ...options, method: "POST", path: "/v1/usage/quote", write: false }, (init) =>
      this.t.api.POST("/v1/usage/quote", { body, ...init }),
    );
  }

  /** Decide the payer and place the hold (201). Declines throw `UsageDeclinedError`. */
  async start(body: RecordingStart, options: RecordingCallOptions): Promise<RecordingView> {
    checkRecordingStart(body);
    return this.write("POST", "/v1/recordings", options, (init) => this.t.api.POST("/v1/recordings", { body, ...init }));
  }

  async get(recordingId: string, options: RecordingCallOptions): Promise<RecordingView> {
    return this.read(`/v1/recordings/${recordingId}`, options, (init) =>
      this.t.api.GET("/v1/recordings/{recording_id}", { params: { path: { recording_id: recordingId } }, ...init }),
    );
  }

  /** Hold more minutes on the same payer; a decline keeps what is held (`UsageDeclinedError`). */
  async extend(recordingId: string, body: RecordingExtend, options: RecordingCallOptions): Promise<RecordingView> {
    checkMinutes(body.additional_minutes, "additional_minutes");
    return this.write("POST", `/v1/recordings/${recordingId}/extend`, options, (init) =>
      this.t.api.POST("/v1/recordings/{recording_id}/extend", {
        params: { path: { recording_id: recordingId } },
        body,
        ...init,
      }),
    );
  }

  /** Charge the wall-clock minutes of the longest source (rounded up once), release the rest. */
  async finish(recordingId: string, body: RecordingFinish, options: RecordingCallOptions): Promise<RecordingView> {
    const seconds = checkSecondsBySource(body.seconds_by_source);
    return this.write("POST", `/v1/recordings/${recordingId}/finish`, options, (init) =>
      this.t.api.POST("/v1/recordings/{recording_id}/finish", {
        params: { path: { recording_id: recordingId } },
        body: { ...body, seconds_by_source: seconds },
        ...init,
      }),
    );
  }

  /** The user stopped before anything was worth charging: released, nothing charged. */
  async cancel(recordingId: string, options: RecordingCallOptions): Promise<RecordingView> {
    return this.write("POST", `/v1/recordings/${recordingId}/cancel`, options, (init) =>
      this.t.api.POST("/v1/recordings/{recording_id}/cancel", {
        params: { path: { recording_id: recordingId } },
        ...init,
      }),
    );
  }

  /** Processing failed on Chronote's side: released, nothing charged. */
  async fail(recordingId: string, options: RecordingCallOptions): Promise<RecordingView> {
    return this.write("POST", `/v1/recordings/${recordingId}/fail`, options, (init) =>
      this.t.api.POST("/v1/recordings/{recording_id}/fail", {
        params: { path: { recording_id: recordingId } },
        ...init,
      }),
    );
  }
}

/** Metered events (chat-to-speech messages, Ask questions): charged at once, once per event id. */
export class Events extends Group {
  /**
   * Charge one event. `event_id` is the idempotency: the same id charges once, however often it
   * is sent; derive it from your own id (the message or question id).
   */
  async charge(body: MeteredEvent, options: ActingCallOptions): Promise<RecordingView> {
    checkMeteredEvent(body);
    return this.t.call<RecordingView>(
      { ...options, idempotencyKey: options.idempotencyKey ?? `event:${body.event_id}`, method: "POST", path: "/v1/usage/events", write: true },
      (init) => this.t.api.POST("/v1/usage/events", { body, ...init }),
    );
  }
}

/** Meetings: who paid for one, and sharing a personal meeting with a server (no charge). */
export class Meetings extends Group {
  async share(meetingId: string, guildId: string, options: ActingCallOptions): Promise<AttributionView> {
    const guild = checkSnowflake(guildId, "guild_id");
    return this.write("POST", `/v1/meetings/${meetingId}/shares`, options, (init) =>
      this.t.api.POST("/v1/meetings/{meeting_id}/shares", {
        params: { path: { meeting_id: meetingId } },
        body: { guild_id: guild },
        ...init,
      }),
    );
  }

  async attribution(meetingId: string, options: RecordingCallOptions): Promise<AttributionView> {
    return this.read(`/v1/meetings/${meetingId}/attribution`, options, (init) =>
      this.t.api.GET("/v1/meetings/{meeting_id}/attribution", { params: { path: { meeting_id: meetingId } }, ...init }),
    );
  }
}

/** What a user may do where, and what each funding source has left. */
export class Entitlements extends Group {
  async get(query: { context: UsageContext; guildId?: string }, options: ActingCallOptions): Promise<EntitlementsView> {
    if (query.guildId !== undefined) checkSnowflake(query.guildId, "guild_id");
    return this.read("/v1/entitlements", options, (init) =>
      this.t.api.GET("/v1/entitlements", {
        params: { query: { context: query.context, guild_id: query.guildId } },
        ...init,
      }),
    );
  }
}

/** The acting user's funding sources (personal wallet, organization authorizations) and their order. */
export class FundingSources extends Group {
  async list(options: ActingCallOptions): Promise<FundingSourceView[]> {
    return this.read("/v1/funding-sources", options, (init) => this.t.api.GET("/v1/funding-sources", { ...init }));
  }

  /** The order of authorizations after the personal wallet (which always comes first). */
  async setOrder(order: string[], options: ActingCallOptions): Promise<FundingSourceView[]> {
    return this.write("PUT", "/v1/funding-sources/order", options, (init) =>
      this.t.api.PUT("/v1/funding-sources/order", { body: { order }, ...init }),
    );
  }
}

/** Catalog, checkout, plan changes and the Stripe customer portal. */
export class Billing extends Group {
  async catalog(options?: CallOptions): Promise<CatalogView> {
    return this.read("/v1/catalog", options, (init) => this.t.api.GET("/v1/catalog", { ...init }));
  }

  async subscription(accountId: string, options: ActingCallOptions): Promise<SubscriptionView> {
    return this.read(`/v1/accounts/${accountId}/subscription`, options, (init) =>
      this.t.api.GET("/v1/accounts/{account_id}/subscription", { params: { path: { account_id: accountId } }, ...init }),
    );
  }

  /** A Stripe Checkout for a plan (`plan`, `interval`) or a credit pack (`pack`): open its `url`. */
  async checkout(accountId: string, body: CheckoutRequest, options: ActingCallOptions): Promise<CheckoutView> {
    return this.write("POST", `/v1/accounts/${accountId}/checkout`, options, (init) =>
      this.t.api.POST("/v1/accounts/{account_id}/checkout", {
        params: { path: { account_id: accountId } },
        body,
        ...init,
      }),
    );
  }

  /** Upgrade now (prorated) or downgrade at period end; never a second subscription. */
  async changePlan(accountId: string, body: PlanChangeRequest, options: ActingCallOptions): Promise<PlanChangeView> {
    return this.write("POST", `/v1/accounts/${accountId}/subscription`, options, (init) =>
      this.t.api.POST("/v1/accounts/{account_id}/subscription", {
        params: { path: { account_id: accountId } },
        body,
        ...init,
      }),
    );
  }

  async cancelSubscription(accountId: string, options: ActingCallOptions): Promise<CancelView> {
    return this.write("DELETE", `/v1/accounts/${accountId}/subscription`, options, (init) =>
      this.t.api.DELETE("/v1/accounts/{account_id}/subscription", { params: { path: { account_id: accountId } }, ...init }),
    );
  }

  /** A Stripe customer portal session on this account's own customer. */
  async portalSession(accountId: string, body: PortalRequest | undefined, options: ActingCallOptions): Promise<PortalSessionView> {
    return this.write("POST", `/v1/accounts/${accountId}/portal-session`, options, (init) =>
      this.t.api.POST("/v1/accounts/{account_id}/portal-session", {
        params: { path: { account_id: accountId } },
        ...(body ? { body } : {}),
        ...init,
      }),
    );
  }
}

/** Organizations, members, linked servers, authorizations and the audit log. */
export class Orgs extends Group {
  async create(body: OrgCreate, options: ActingCallOptions): Promise<OrgView> {
    return this.write("POST", "/v1/orgs", options, (init) => this.t.api.POST("/v1/orgs", { body, ...init }));
  }

  /** Organizations the acting user belongs to, with their role. */
  async mine(options: ActingCallOptions): Promise<MembershipView[]> {
    return this.read("/v1/orgs", options, (init) => this.t.api.GET("/v1/orgs", { ...init }));
  }

  async get(orgId: string, options: ActingCallOptions): Promise<OrgView> {
    return this.read(`/v1/orgs/${orgId}`, options, (init) =>
      this.t.api.GET("/v1/orgs/{org_id}", { params: { path: { org_id: orgId } }, ...init }),
    );
  }

  async members(orgId: string, options: ActingCallOptions): Promise<MemberView[]> {
    return this.read(`/v1/orgs/${orgId}/members`, options, (init) =>
      this.t.api.GET("/v1/orgs/{org_id}/members", { params: { path: { org_id: orgId } }, ...init }),
    );
  }

  async addMember(orgId: string, body: MemberAdd, options: ActingCallOptions): Promise<MemberView> {
    checkSnowflake(body.user_id, "user_id");
    return this.write("POST", `/v1/orgs/${orgId}/members`, options, (init) =>
      this.t.api.POST("/v1/orgs/{org_id}/members", { params: { path: { org_id: orgId } }, body, ...init }),
    );
  }

  async setRole(orgId: string, userId: string, role: OrgRole, options: ActingCallOptions): Promise<MemberView> {
    checkSnowflake(userId, "user_id");
    return this.write("PATCH", `/v1/orgs/${orgId}/members/${userId}`, options, (init) =>
      this.t.api.PATCH("/v1/orgs/{org_id}/members/{user_id}", {
        params: { path: { org_id: orgId, user_id: userId } },
        body: { role },
        ...init,
      }),
    );
  }

  /** Remove a member; their authorizations are revoked. */
  async removeMember(orgId: string, userId: string, options: ActingCallOptions): Promise<MemberView> {
    return this.write("DELETE", `/v1/orgs/${orgId}/members/${userId}`, options, (init) =>
      this.t.api.DELETE("/v1/orgs/{org_id}/members/{user_id}", {
        params: { path: { org_id: orgId, user_id: userId } },
        ...init,
      }),
    );
  }

  async servers(orgId: string, options: ActingCallOptions): Promise<ServerView[]> {
    return this.read(`/v1/orgs/${orgId}/servers`, options, (init) =>
      this.t.api.GET("/v1/orgs/{org_id}/servers", { params: { path: { org_id: orgId } }, ...init }),
    );
  }

  /** Link a server: the acting user needs Manage Server on it (state it in `as.manageGuilds`). */
  async linkServer(orgId: string, guildId: string, options: ActingCallOptions): Promise<ServerView> {
    const guild = checkSnowflake(guildId, "guild_id");
    return this.write("POST", `/v1/orgs/${orgId}/servers`, options, (init) =>
      this.t.api.POST("/v1/orgs/{org_id}/servers", {
        params: { path: { org_id: orgId } },
        body: { guild_id: guild },
        ...init,
      }),
    );
  }

  async unlinkServer(orgId: string, guildId: string, options: ActingCallOptions): Promise<ServerView> {
    return this.write("DELETE", `/v1/orgs/${orgId}/servers/${guildId}`, options, (init) =>
      this.t.api.DELETE("/v1/orgs/{org_id}/servers/{guild_id}", {
        params: { path: { org_id: orgId, guild_id: guildId } },
        ...init,
      }),
    );
  }

  async authorizations(orgId: string, options: ActingCallOptions): Promise<AuthorizationView[]> {
    return this.read(`/v1/orgs/${orgId}/authorizations`, options, (init) =>
      this.t.api.GET("/v1/orgs/{org_id}/authorizations", { params: { path: { org_id: orgId } }, ...init }),
    );
  }

  /** Authorize a member (personal work) or a linked server (its meetings) to spend. */
  async authorize(orgId: string, body: AuthorizationCreate, options: ActingCallOptions): Promise<AuthorizationView> {
    checkSnowflake(body.subject_id, "subject_id");
    return this.write("POST", `/v1/orgs/${orgId}/authorizations`, options, (init) =>
      this.t.api.POST("/v1/orgs/{org_id}/authorizations", { params: { path: { org_id: orgId } }, body, ...init }),
    );
  }

  async audit(orgId: string, query: { limit?: number }, options: ActingCallOptions): Promise<AuditEntryView[]> {
    return this.read(`/v1/orgs/${orgId}/audit`, options, (init) =>
      this.t.api.GET("/v1/orgs/{org_id}/audit", {
        params: { path: { org_id: orgId }, query: { limit: query.limit } },
        ...init,
      }),
    );
  }
}

/** Spend authorizations by id: change or revoke. */
export class Authorizations extends Group {
  /** Change the cap, sources or end; only the fields present in `body` change. */
  async update(authorizationId: string, body: AuthorizationUpdate, options: ActingCallOptions): Promise<AuthorizationView> {
    return this.write("PATCH", `/v1/authorizations/${authorizationId}`, options, (init) =>
      this.t.api.PATCH("/v1/authorizations/{authorization_id}", {
        params: { path: { authorization_id: authorizationId } },
        body,
        ...init,
      }),
    );
  }

  /** Revoke at once for new holds; open recordings may finish. */
  async revoke(authorizationId: string, options: ActingCallOptions): Promise<AuthorizationView> {
    return this.write("POST", `/v1/authorizations/${authorizationId}/revoke`, options, (init) =>
      this.t.api.POST("/v1/authorizations/{authorization_id}/revoke", {
        params: { path: { authorization_id: authorizationId } },
        ...init,
      }),
    );
  }
}

/** Usage reports of an account: grouped, or as CSV lines with their reasons. */
export class Reports extends Group {
  async usage(accountId: string, query: UsageQuery, options: ActingCallOptions): Promise<UsageReport> {
    return this.read(`/v1/accounts/${accountId}/usage`, options, (init) =>
      this.t.api.GET("/v1/accounts/{account_id}/usage", {
        params: {
          path: { account_id: accountId },
          query: { group_by: query.groupBy, since: query.since, until: query.until },
        },
        ...init,
      }),
    );
  }

  /** CSV text: one line per charge with its reason, or grouped when `groupBy` is given. */
  async usageCsv(accountId: string, query: UsageQuery, options: ActingCallOptions): Promise<string> {
    return this.read<string>(`/v1/accounts/${accountId}/usage.csv`, options, async (init) => {
      const result = await this.t.api.GET("/v1/accounts/{account_id}/usage.csv", {
        params: {
          path: { account_id: accountId },
          query: { group_by: query.groupBy, since: query.since, until: query.until },
        },
        parseAs: "text",
        ...init,
      });
      return result as SendResult<string>;
    });
  }
}

/** A person's own data (decision 0047): everything kept about them. */
export class People extends Group {
  /** As JSON text, or CSV; for the person themselves (acting for them) or an operator. */
  async export(userId: string, format: "json" | "csv", options: ActingCallOptions): Promise<string> {
    checkSnowflake(userId, "user_id");
    return this.read<string>(`/v1/people/${userId}/export`, options, async (init) => {
      const result = await this.t.api.GET("/v1/people/{user_id}/export", {
        params: { path: { user_id: userId }, query: { format } },
        parseAs: "text",
        ...init,
      });
      return result as SendResult<string>;
    });
  }
}

/**
 * The Chronote Billing client. One per process is enough: it holds no user, only the API key.
 *
 * ```ts
 * const billing = new ChronoteBillingClient({ baseUrl, apiKey: process.env.CHRONOTE_BILLING_KEY! });
 * const rec = await billing.recordings.start(body, { as: { userId }, idempotencyKey: `meeting:${id}:start` });
 * ```
 */
export class ChronoteBillingClient {
  readonly transport: Transport;
  readonly accounts: Accounts;
  readonly recordings: Recordings;
  readonly events: Events;
  readonly meetings: Meetings;
  readonly entitlements: Entitlements;
  readonly fundingSources: FundingSources;
  readonly billing: Billing;
  readonly orgs: Orgs;
  readonly authorizations: Authorizations;
  readonly reports: Reports;
  readonly people: People;

  constructor(options: ClientOptions) {
    this.transport = new Transport(options);
    this.accounts = new Accounts(this.transport);
    this.recordings = new Recordings(this.transport);
    this.events = new Events(this.transport);
    this.meetings = new Meetings(this.transport);
    this.entitlements = new Entitlements(this.transport);
    this.fundingSources = new FundingSources(this.transport);
    this.billing = new Billing(this.transport);
    this.orgs = new Orgs(this.transport);
    this.authorizations = new Authorizations(this.transport);
    this.reports = new Reports(this.transport);
    this.people = new People(this.transport);
  }
}
