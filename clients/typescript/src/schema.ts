// Names for the server's schemas, from the generated OpenAPI types.
import type { components } from "./generated/openapi.js";

type Schemas = components["schemas"];

export type AccountLookup = Schemas["AccountLookup"];
export type AccountView = Schemas["AccountView"];
export type BalanceView = Schemas["BalanceView"];
export type StatementPage = Schemas["StatementPage"];
export type StatementLine = Schemas["StatementLine"];
export type EconomicStatementPage = Schemas["EconomicStatementPage"];
export type BillingDocumentList = Schemas["BillingDocumentList"];
export type RunwayView = Schemas["RunwayView"];
export type GrantView = Schemas["GrantView"];
export type AlertSettingsUpdate = Schemas["AlertSettingsUpdate"];
export type AlertSettingsView = Schemas["AlertSettingsView"];
export type AutoRechargeUpdate = Schemas["AutoRechargeUpdate"];
export type AutoRechargeView = Schemas["AutoRechargeView"];

export type RecordingStart = Schemas["RecordingStart"];
export type RecordingExtend = Schemas["RecordingExtend"];
export type RecordingFinish = Schemas["RecordingFinish"];
export type RecordingView = Schemas["RecordingView"];
export type Decision = Schemas["Decision"];
export type MeteredEvent = Schemas["MeteredEvent"];
export type AttributionView = Schemas["AttributionView"];
export type EntitlementsView = Schemas["EntitlementsView"];
export type FundingSourceView = Schemas["FundingSourceView"];
export type UsageReport = Schemas["UsageReport"];
export type UsageReportRow = Schemas["UsageReportRow"];

export type CatalogView = Schemas["CatalogView"];
export type PlanView = Schemas["PlanView"];
export type CreditPackView = Schemas["CreditPackView"];
export type CheckoutRequest = Schemas["CheckoutRequest"];
export type CheckoutView = Schemas["CheckoutView"];
export type PortalRequest = Schemas["PortalRequest"];
export type PortalSessionView = Schemas["PortalSessionView"];
export type SubscriptionView = Schemas["SubscriptionView"];
export type PlanChangeRequest = Schemas["PlanChangeRequest"];
export type PlanChangeView = Schemas["PlanChangeView"];
export type CancelView = Schemas["CancelView"];

export type OrgCreate = Schemas["OrgCreate"];
export type OrgView = Schemas["OrgView"];
export type MembershipView = Schemas["MembershipView"];
export type MemberAdd = Schemas["MemberAdd"];
export type MemberView = Schemas["MemberView"];
export type ServerView = Schemas["ServerView"];
export type AuthorizationCreate = Schemas["AuthorizationCreate"];
export type AuthorizationUpdate = Schemas["AuthorizationUpdate"];
export type AuthorizationView = Schemas["AuthorizationView"];
export type AuditEntryView = Schemas["AuditEntryView"];

/** Roles in an organization. */
export type OrgRole = NonNullable<MemberAdd["role"]>;
/** Ways to group a usage report. */
export type UsageGroupBy = "day" | "source" | "member" | "server" | "context";
