"""Wires the domain services to one database and one clock; the edges share one container."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from chronote_billing.accounts.service import AccountService
from chronote_billing.apikeys.service import ApiKeyService
from chronote_billing.config import Settings, get_settings
from chronote_billing.core.clock import Clock, system_clock
from chronote_billing.core.db import Database, get_database
from chronote_billing.ledger.service import LedgerService


@dataclass
class Container:
    db: Database = field(default_factory=get_database)
    clock: Clock = system_clock
    settings: Settings = field(default_factory=get_settings)

    @cached_property
    def ledger(self) -> LedgerService:
        return LedgerService(self.clock)

    @cached_property
    def accounts(self) -> AccountService:
        return AccountService(self.clock, self.ledger)

    @cached_property
    def api_keys(self) -> ApiKeyService:
        return ApiKeyService(self.clock)
