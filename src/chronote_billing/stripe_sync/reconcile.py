"""`reconcile`: compare our customers and subscriptions with Stripe's, report drift, optionally fix it.

Reads a page of accounts in one short transaction, asks Stripe about each (no transaction open),
and writes each fix in its own transaction. A fix of a subscription goes through the same
ordering-aware path as a webhook, stamped with the reconcile time, so a newer Stripe event still
wins afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from chronote_billing.accounts.models import BillingAccount
from chronote_billing.core.clock import Clock
from chronote_billing.core.db import Database
from chronote_billing.integrations.stripe.client import (
    StripeClient,
    StripeFailure,
    call,
    failed_to,
    request,
    to_dict,
)
from chronote_billing.integrations.stripe.objects import Subscription

from .metadata import metadata_for
from .models import StripeSubscription
from .plan_subscriptions import ENDED_STATUSES, LIVE_STATUSES, plan_for_lookup_key
from .timestamps import to_ts
from .webhooks.context import Applying, EventRef, Hints, Outcome
from .webhooks.inbox import WebhookInbox
from .webhooks.subscriptions import DELETED, on_subscription

log = structlog.get_logger(__name__)


@dataclass
class Drift:
    account_id: str
    kind: str  # customer_missing, customer_metadata, subscription_missing_locally, subscription_differs, ...
    detail: str
    fixed: bool = False


@dataclass
class ReconcileReport:
    checked: int = 0
    drift: list[Drift] = field(default_factory=list)

    @property
    def fixed(self) -> int:
        return sum(1 for d in self.drift if d.fixed)


@dataclass(frozen=True)
class _Local:
    account_id: str
    kind: str
    owner_ref: str
    customer: str
    subs: dict[
        str, tuple[str, str, int, int, bool, bool]
    ]  # id -> (status, plan, start, end, deleted, cancel)


class Reconciler:
    def __init__(self, db: Database, clock: Clock, client: StripeClient, inbox: WebhookInbox) -> None:
        self.db = db
        self.clock = clock
        self.client = client
        self.inbox = inbox

    def accounts(self) -> list[_Local]:
        def work(session: Session) -> list[_Local]:
            rows = session.execute(
                select(BillingAccount)
                .where(BillingAccount.stripe_customer_id.is_not(None))
                .order_by(BillingAccount.id)
            ).scalars()
            out = []
            for account in rows:
                subs = {
                    s.id: (
                        s.status,
                        s.plan_id,
                        to_ts(s.current_period_start),
                        to_ts(s.current_period_end),
                        s.deleted,
                        s.cancel_at_period_end,
                    )
                    for s in session.execute(
                        select(StripeSubscription).where(StripeSubscription.account_id == account.id)
                    ).scalars()
                }
                out.append(
                    _Local(
                        account.id, account.kind, account.owner_ref, account.stripe_customer_id or "", subs
                    )
                )
            return out

        return self.db.read(work)

    def run(
        self,
        fix: bool = False,
        accounts: list[str] | None = None,
        on_total: Callable[[int], None] | None = None,
        on_progress: Callable[[], None] | None = None,
    ) -> ReconcileReport:
        report = ReconcileReport()
        locals_ = [a for a in self.accounts() if accounts is None or a.account_id in accounts]
        if on_total:
            on_total(len(locals_))
        for local in locals_:
            self._check(local, fix, report)
            report.checked += 1
            if on_progress:
                on_progress()
        return report

    def _check(self, local: _Local, fix: bool, report: ReconcileReport) -> None:
        try:
            customer = to_dict(request(lambda: self.client.v1.customers.retrieve(local.customer)))
        except StripeFailure as exc:
            if not exc.missing:
                # Any other refusal or an outage is the domain's one-line error, not a traceback.
                raise failed_to(f"read customer {local.customer}", exc) from exc
            customer = {"deleted": True}
        if customer.get("deleted"):
            report.drift.append(
                Drift(local.account_id, "customer_missing", f"Stripe has no customer {local.customer}")
            )
            return
        want = metadata_for(local.account_id, local.kind, local.owner_ref)
        meta = customer.get("metadata") or {}
        if any(meta.get(k) != v for k, v in want.items()):
            drift = Drift(
                local.account_id, "customer_metadata", f"customer {local.customer} lacks our metadata"
            )
            if fix:
                call(
                    "update customer metadata",
                    lambda: self.client.v1.customers.update(local.customer, params={"metadata": want}),
                )
                drift.fixed = True
            report.drift.append(drift)

        page = call(
            "list subscriptions",
            lambda: self.client.v1.subscriptions.list(
                params={"customer": local.customer, "status": "all", "limit": 100}
            ),
        )
        remote = [Subscription.model_validate(to_dict(s)) for s in page.data]
        live = [s for s in remote if s.status in LIVE_STATUSES]
        if len(live) > 1:
            report.drift.append(
                Drift(
                    local.account_id,
                    "second_subscription",
                    f"{len(live)} live subscriptions in Stripe: {', '.join(s.id for s in live)}",
                )
            )
        seen = set()
        for sub in remote:
            seen.add(sub.id)
            found = plan_for_lookup_key(self.inbox.services.catalog, sub.lookup_key)
            if found is None:
                continue
            # The item's period (the subscription's own in older API versions).
            start = sub.item.current_period_start or sub.current_period_start
            end = sub.item.current_period_end or sub.current_period_end
            mine = local.subs.get(sub.id)
            kind = None
            if mine is None:
                kind, detail = "subscription_missing_locally", f"{sub.id} ({sub.status}) is not mirrored"
            else:
                status, plan, l_start, l_end, deleted, cancel = mine
                differences = []
                if status != sub.status and not (deleted and sub.status == "canceled"):
                    differences.append(f"status {status} != {sub.status}")
                if (l_start, l_end) != (start, end):
                    differences.append("period")
                if cancel != sub.cancels and not deleted:
                    differences.append(f"cancel_at_period_end {cancel} != {sub.cancels}")
                if plan != found[0].id and not sub.metadata.get("chronote_downgrade_from"):
                    differences.append(f"plan {plan} != {found[0].id}")
                if differences:
                    kind, detail = "subscription_differs", f"{sub.id}: " + ", ".join(differences)
            if kind is None:
                continue
            drift = Drift(local.account_id, kind, detail)
            if fix:
                self._apply_snapshot(sub)
                drift.fixed = True
            report.drift.append(drift)
        for sub_id, (status, _plan, _s, _e, deleted, _c) in local.subs.items():
            if sub_id not in seen and not deleted and status not in ENDED_STATUSES:
                report.drift.append(
                    Drift(
                        local.account_id, "subscription_missing_in_stripe", f"{sub_id} is {status} here only"
                    )
                )

    def _apply_snapshot(self, sub: Subscription) -> None:
        """Stripe's current state is at least as new as any event we applied before reading it."""
        ended = sub.status in ENDED_STATUSES

        def work(session: Session) -> None:
            row = session.get(StripeSubscription, sub.id)
            created = max(to_ts(self.clock.now()), row.last_event_created if row else 0)
            event = EventRef(
                f"reconcile_{sub.id}_{created}",
                DELETED if ended else "customer.subscription.updated",
                created,
            )
            outcome = Outcome()
            # Through the webhook handler, with the container's services the inbox holds.
            on_subscription(Applying(self.inbox.services, session, event, Hints(), outcome), sub)
            log.info(
                "reconcile_fix", subscription=sub.id, outcome=outcome.outcome, note="; ".join(outcome.notes)
            )

        self.db.write(work)
