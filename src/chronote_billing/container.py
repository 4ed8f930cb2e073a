"""Wires the domain services to one database and one clock; the edges share one container."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from chronote_billing.accounts.service import AccountService
from chronote_billing.apikeys.service import ApiKeyService
from chronote_billing.catalog.service import Catalog, load_catalog
from chronote_billing.config import Settings, get_settings
from chronote_billing.core.clock import Clock, system_clock
from chronote_billing.core.db import Database, get_database
from chronote_billing.ledger.service import LedgerService
from chronote_billing.notifications.service import NotificationService
from chronote_billing.orgs.service import OrgService
from chronote_billing.runway.service import RunwayService
from chronote_billing.stripe_sync.service import BillingService
from chronote_billing.usage.fast_path import CommittedWrites
from chronote_billing.usage.service import UsageService


@dataclass
class Container:
    db: Database = field(default_factory=get_database)
    clock: Clock = system_clock
    settings: Settings = field(default_factory=get_settings)

    @cached_property
    def catalog(self) -> Catalog:
        return load_catalog()

    @cached_property
    def ledger(self) -> LedgerService:
        return LedgerService(self.clock)

    @cached_property
    def accounts(self) -> AccountService:
        return AccountService(self.clock, self.ledger)

    @cached_property
    def api_keys(self) -> ApiKeyService:
        return ApiKeyService(self.clock)

    @cached_property
    def billing(self) -> BillingService:
        return BillingService(
            self.db, self.clock, self.ledger, self.settings, self.catalog, self.notifications
        )

    @cached_property
    def orgs(self) -> OrgService:
        return OrgService(self.clock, self.ledger, self.accounts)

    @cached_property
    def usage(self) -> UsageService:
        return UsageService(
            self.clock, self.ledger, self.accounts, self.orgs, self.notifications, self.catalog
        )

    @cached_property
    def notifications(self) -> NotificationService:
        return NotificationService(self.clock, self.ledger, self.catalog)

    @cached_property
    def usage_writes(self) -> CommittedWrites:
        """The recording path's writes, each a transaction of its own (what the API calls)."""
        return CommittedWrites(self.db, self.usage.recordings, self.usage.events)

    @cached_property
    def runway(self) -> RunwayService:
        return RunwayService(self.clock, self.ledger, self.catalog)
