"""The metadata we write on Stripe objects and read back from their events (decision 0009)."""

from __future__ import annotations

from typing import Protocol

from chronote_billing.accounts.models import AccountKind

OWNER_METADATA_KEY = {
    AccountKind.PERSONAL: "discord_user_id",
    AccountKind.SERVER: "guild_id",
    AccountKind.ORGANIZATION: "org_id",
}
# `chronote_kind` of a pack checkout's payment and receipt invoice (which never grants: its
# checkout does, decision 0043), and of an auto-recharge's off-session payment.
PACK_CHECKOUT = "credit_pack_checkout"
PACK_OFF_SESSION = "credit_pack_off_session"


class Payer(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def owner_ref(self) -> str: ...


def account_metadata(account: Payer) -> dict[str, str]:
    """The metadata that ties a Stripe object to its billing account (0009)."""
    return metadata_for(account.id, str(account.kind), account.owner_ref)


def metadata_for(account_id: str, kind: str, owner_ref: str) -> dict[str, str]:
    return {
        "chronote_account_id": account_id,
        "account_kind": kind,
        OWNER_METADATA_KEY[AccountKind(kind)]: owner_ref,
    }
