"""Which account each billing page bills and where that page lives: the personal account, a
Discord server's, an organization's; and each account's statement as a CSV download."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from chronote_billing.accounts.models import BillingAccount
from chronote_billing.balances import service as balances
from chronote_billing.container import Container
from chronote_billing.core.errors import BillingError

from . import views
from .auth import SignedIn, container_of, current_user
from .responses import error_page, login_redirect

Resolve = Callable[[Container, Session, SignedIn], BillingAccount]

PERSONAL = "/portal/personal/billing"


def server_url(guild_id: str) -> str:
    return f"/portal/server/{guild_id}/billing"


def org_url(org_id: str, tab: str = "billing") -> str:
    base = f"/portal/org/{org_id}/billing"
    return base if tab == "billing" else f"{base}/{tab}"


def resolve_personal(c: Container, s: Session, u: SignedIn) -> BillingAccount:
    return views.personal_account(c, s, u)


def resolve_server(guild_id: str) -> Resolve:
    return lambda c, s, u: views.server_account(c, s, u, guild_id)


def resolve_org(org_id: str) -> Resolve:
    return lambda c, s, u: views.org_account(c, s, u, org_id)[1]


def statement_csv(request: Request, resolve: Resolve, name: str) -> Response:
    """The account's whole economic statement (decision 0038) as a CSV download."""
    user = current_user(request)
    if user is None:
        return login_redirect(request)
    c = container_of(request)
    signed_in = user

    def work(s: Session) -> str:
        return balances.statement_csv(s, c.ledger, resolve(c, s, signed_in))

    try:
        body = c.db.write(work)
    except BillingError as exc:
        return error_page(request, user, exc)
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="statement-{name}.csv"'},
    )
