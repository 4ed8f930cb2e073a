"""What each portal page shows, read from the services inside one transaction.

Each builder checks access through the access rules first, then gathers service results into
plain dictionaries for the templates. No rule is decided here: amounts, plans, limits and
permissions all come from the services.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy.orm import Session

from chronote_billing.access.service import require_manage
from chronote_billing.accounts.models import AccountKind, BillingAccount
from chronote_billing.accounts.service import check_snowflake
from chronote_billing.balances import service as balances
from chronote_billing.catalog.service import Catalog, Plan
from chronote_billing.container import Container
from chronote_billing.core.clock import month_bounds
from chronote_billing.core.errors import BillingError, NotFound, ValidationFailed
from chronote_billing.ledger.schemas import BalanceView
from chronote_billing.orgs.models import ROLES
from chronote_billing.orgs.service import ADMIN_ROLES, PERSONAL_SOURCES, SERVER_SOURCES
from chronote_billing.people import service as people
from chronote_billing.stripe_sync.entitlements import ensure_free_allowance
from chronote_billing.stripe_sync.plan_subscriptions import ENDED_STATUSES
from chronote_billing.usage.reports import usage_csv, usage_report

from .auth import SignedIn
from .extra_parts import page_extras
from .forms import parse_day
from .presenters import bar_chart

ALLOWANCE_SOURCES = ("free_allowance", "plan_allowance")
STATEMENT_LINES = 25


# ---------------------------------------------------------------------------- accounts


def personal_account(c: Container, session: Session, user: SignedIn) -> BillingAccount:
    account = c.accounts.get_or_create(session, AccountKind.PERSONAL, user.user_id, user.name)
    require_manage(session, user.principal, account)
    return account


def server_account(c: Container, session: Session, user: SignedIn, guild_id: str) -> BillingAccount:
    """The server's account, created on first visit by someone who manages the server."""
    try:
        guild_id = check_snowflake(guild_id, "guild_id")
    except ValidationFailed as exc:
        raise NotFound(f"There is no Discord server '{guild_id}'.", guild_id=guild_id) from exc
    account = c.accounts.find(session, AccountKind.SERVER, guild_id)
    if account is None:
        # Check before creating anything, with the same rule the saved account will get.
        probe = BillingAccount(id=f"server:{guild_id}", kind="server", owner_ref=guild_id)
        require_manage(session, user.principal, probe)
        name = user.guild_name(guild_id)
        account = c.accounts.get_or_create(session, AccountKind.SERVER, guild_id, name)
    require_manage(session, user.principal, account)
    return account


# ---------------------------------------------------------------------------- shared parts


def plan_status(c: Container, session: Session, account: BillingAccount) -> dict[str, Any]:
    """Plan, status, current period and grace end, as the billing service reports them."""
    view = c.billing.subscription_view(session, account)
    catalog = c.catalog
    plan = catalog.plans.get(view.plan) if view.plan else None
    subscribed = view.subscription_id is not None and view.status not in ENDED_STATUSES
    if view.plan_source == "paid" and view.current_period_start and view.current_period_end:
        period_start, period_end = view.current_period_start, view.current_period_end
    else:
        period_start, period_end = month_bounds(c.clock.now())
    return {
        "plan": plan,
        "view": view,
        "subscribed": subscribed,
        "status": view.status if subscribed and view.status else view.plan_source,
        "pending_plan": catalog.plans.get(view.pending_plan) if view.pending_plan else None,
        "period_start": period_start,
        "period_end": period_end,
    }


def allowance(balance: BalanceView) -> dict[str, int]:
    """This period's allowance as granted in the ledger: granted, used and left."""
    grants = [g for g in balance.grants if g.source in ALLOWANCE_SOURCES and g.status == "active"]
    granted = sum(g.amount for g in grants)
    left = sum(g.remaining for g in grants)
    return {"granted": granted, "left": left, "used": granted - left}


def credits_part(c: Container, session: Session, account: BillingAccount) -> dict[str, Any]:
    balance = balances.available_balance(session, c.ledger, account)
    statement = balances.statement(session, c.ledger, account, limit=STATEMENT_LINES)
    return {
        "balance": balance,
        "grants": balance.grants,
        "allowance": allowance(balance),
        # One line per economic event; recordings in progress are reserved, not moved (0038).
        "statement": statement,
    }


def plan_cards(catalog: Catalog, scope: str, current: Plan | None) -> list[dict[str, Any]]:
    cards = []
    for plan in sorted(catalog.plans.values(), key=lambda p: p.rank):
        if plan.scope != scope:
            continue
        cards.append(
            {
                "plan": plan,
                "current": current is not None and current.id == plan.id,
                "prices": {p.interval: p for p in plan.prices},
            }
        )
    return cards


def account_header(account: BillingAccount, billed_to: str) -> dict[str, Any]:
    return {
        "account": account,
        "billed_to": billed_to,
        "has_customer": bool(account.stripe_customer_id),
    }


# ---------------------------------------------------------------------------- pages


def personal_billing(c: Container, session: Session, user: SignedIn) -> dict[str, Any]:
    account = personal_account(c, session, user)
    ensure_free_allowance(session, c.ledger, account, c.clock.now())
    catalog = c.catalog
    status = plan_status(c, session, account)
    return {
        **account_header(account, "you"),
        **credits_part(c, session, account),
        "statement_csv": "/portal/personal/billing/statement.csv",
        "funding": funding(c, session, user),
        "plan_status": status,
        "plans": plan_cards(catalog, "personal", status["plan"]),
        "packs": list(catalog.credit_packs.values()),
        "catalog": catalog,
        **page_extras(c, session, account),
    }


def funding(c: Container, session: Session, user: SignedIn) -> list[Any]:
    """The person's funding sources (personal plan, each authorization held) in their order."""
    return sorted(c.usage.funding_sources(session, user.user_id), key=lambda f: f.position)


def funding_part(c: Container, session: Session, user: SignedIn) -> dict[str, Any]:
    personal_account(c, session, user)
    return {"funding": funding(c, session, user)}


def server_billing(c: Container, session: Session, user: SignedIn, guild_id: str) -> dict[str, Any]:
    account = server_account(c, session, user, guild_id)
    ensure_free_allowance(session, c.ledger, account, c.clock.now())
    catalog = c.catalog
    status = plan_status(c, session, account)
    return {
        **account_header(account, f"server {account.display_name}"),
        **credits_part(c, session, account),
        "statement_csv": f"/portal/server/{account.owner_ref}/billing/statement.csv",
        "plan_status": status,
        "plans": plan_cards(catalog, "server", status["plan"]),
        "packs": list(catalog.credit_packs.values()),
        "catalog": catalog,
        "guild_id": account.owner_ref,
        "org_link": server_org_link(c, session, account.owner_ref),
        **server_usage(c, session, account),
        **page_extras(c, session, account),
    }


def server_usage(c: Container, session: Session, account: BillingAccount) -> dict[str, Any]:
    """This month's usage the server paid for, by member and by meeting (amounts and ids only)."""
    start, end = month_bounds(c.clock.now())
    by_member = usage_report(session, account.id, "member", start, end)
    by_meeting = usage_report(session, account.id, "meeting", start, end)
    return {
        "usage_by_member": by_member,
        "usage_by_meeting": sorted(by_meeting.rows, key=lambda r: r.charged, reverse=True)[:20],
        "people": people.names(session, [r.key for r in by_member.rows]),
    }


def server_org_link(c: Container, session: Session, guild_id: str) -> dict[str, Any] | None:
    """The organization a server is linked to and what its authorization has left this month."""
    link = c.orgs.server_link(session, guild_id)
    if link is None:
        return None
    auth = c.orgs.authorization_for_server(session, guild_id)
    return {
        "org_name": c.orgs.get_org(session, link.org_id).name,
        "authorization": c.orgs.authorization_view(session, auth.id) if auth is not None else None,
    }


# ---------------------------------------------------------------------------- organizations


def administered_orgs(c: Container, session: Session, user: SignedIn) -> list[tuple[Any, str]]:
    """Organizations in the switcher: those where the person is owner or billing admin."""
    return [(org, role) for org, role in c.orgs.orgs_for_user(session, user.user_id) if role in ADMIN_ROLES]


def org_account(c: Container, session: Session, user: SignedIn, org_id: str) -> tuple[Any, BillingAccount]:
    """The organization and its billing account, for its owners and billing admins only."""
    org = c.orgs.get_org(session, org_id)
    account = c.accounts.get(session, org.billing_account_id)
    require_manage(session, user.principal, account)
    return org, account


def org_header(c: Container, session: Session, user: SignedIn, org_id: str, tab: str) -> dict[str, Any]:
    """What every organization page shows; ``people``: the known names of its members by Discord
    id (``add_people`` adds those of others the page shows, such as former members)."""
    org, account = org_account(c, session, user, org_id)
    members = c.orgs.list_members(session, org_id)
    return {
        **account_header(account, org.name),
        "org": org,
        "role": next((m.role for m in members if m.user_id == user.user_id), None),
        "tab": tab,
        "members": members,
        "people": {m.user_id: m.display_name for m in members if m.display_name},
    }


def add_people(session: Session, header: dict[str, Any], user_ids: Iterable[str]) -> None:
    known: dict[str, str] = header["people"]
    known.update(people.names(session, [u for u in user_ids if u not in known]))


def org_billing(c: Container, session: Session, user: SignedIn, org_id: str) -> dict[str, Any]:
    header = org_header(c, session, user, org_id, "billing")
    audit = c.orgs.audit_log(session, org_id, limit=50)
    add_people(session, header, [e.actor for e in audit])
    account = header["account"]
    catalog = c.catalog
    servers = server_rows(c, session, user, org_id)
    linked = {row["link"].guild_id for row in servers}
    return {
        **header,
        **credits_part(c, session, account),
        "statement_csv": f"/portal/org/{org_id}/billing/statement.csv",
        "packs": list(catalog.credit_packs.values()),
        "settings": c.notifications.get_settings(session, account.id),
        "pack_names": {p.id: p.name for p in catalog.credit_packs.values()},
        "servers": servers,
        "linkable": [(g, name) for g, name in user.guilds if g not in linked],
        "audit": audit,
        **page_extras(c, session, account),
    }


def server_rows(c: Container, session: Session, user: SignedIn, org_id: str) -> list[dict[str, Any]]:
    rows = []
    for link in c.orgs.list_servers(session, org_id):
        account = c.accounts.get(session, link.server_account_id)
        rows.append({"link": link, "name": user.guild_name(link.guild_id) or account.display_name})
    return rows


def org_members(c: Container, session: Session, user: SignedIn, org_id: str) -> dict[str, Any]:
    return {**org_header(c, session, user, org_id, "members"), "roles": ROLES}


def org_authorizations(c: Container, session: Session, user: SignedIn, org_id: str) -> dict[str, Any]:
    authorizations = c.orgs.list_authorizations(session, org_id)
    servers = server_rows(c, session, user, org_id)
    server_names = c.orgs.server_names(
        session, [a.subject_id for a in authorizations if a.subject_type == "server"]
    ) | {row["link"].guild_id: row["name"] for row in servers}
    return {
        **org_header(c, session, user, org_id, "authorizations"),
        "authorizations": authorizations,
        "server_names": server_names,
        "servers": servers,
        "personal_sources": PERSONAL_SOURCES,
        "server_sources": SERVER_SOURCES,
    }


def new_org(c: Container, session: Session, user: SignedIn) -> dict[str, Any]:
    personal_account(c, session, user)
    return {}


USAGE_GROUPS = ("member", "server", "source", "day", "context")


def usage_window(since: str | None, until: str | None, now: datetime) -> tuple[datetime, datetime]:
    """The report window from the page's date fields (inclusive days, UTC); this month by default."""
    start, end = month_bounds(now)
    if since:
        start = datetime.combine(parse_day(since, "From", "since"), time(0, 0), tzinfo=UTC)
    if until:
        end = datetime.combine(parse_day(until, "To", "until"), time(0, 0), tzinfo=UTC) + timedelta(days=1)
    if end <= start:
        raise ValidationFailed("To must be the same day as From or later.", field="until")
    return start, end


def org_usage(
    c: Container,
    session: Session,
    user: SignedIn,
    org_id: str,
    group_by: str | None,
    since: str | None,
    until: str | None,
) -> dict[str, Any]:
    header = org_header(c, session, user, org_id, "usage")
    group = group_by if group_by in USAGE_GROUPS else "member"
    window_error: dict[str, str] | None = None
    try:
        start, end = usage_window(since, until, c.clock.now())
    except ValidationFailed as exc:
        # Shown beside the date fields; the page keeps this month's figures (decision 0041).
        window_error = {"field": str(exc.details.get("field") or "since"), "message": exc.message}
        start, end = usage_window(None, None, c.clock.now())
    report = usage_report(session, header["account"].id, group, start, end)
    if group == "member":  # former members too
        add_people(session, header, [r.key for r in report.rows])
    daily = report if group == "day" else usage_report(session, header["account"].id, "day", start, end)
    return {
        **header,
        "report": report,
        "group_by": group,
        "groups": USAGE_GROUPS,
        "window_error": window_error,
        "since": since if window_error else start.date().isoformat(),
        "until": until if window_error else (end - timedelta(days=1)).date().isoformat(),
        "chart": bar_chart([(r.key[5:], r.charged) for r in daily.rows]) if daily.rows else None,
        "servers": {row["link"].guild_id: row["name"] for row in server_rows(c, session, user, org_id)},
    }


def org_usage_csv(
    c: Container,
    session: Session,
    user: SignedIn,
    org_id: str,
    group_by: str | None,
    since: str | None,
    until: str | None,
) -> str:
    _, account = org_account(c, session, user, org_id)
    start, end = usage_window(since, until, c.clock.now())
    group = group_by if group_by in USAGE_GROUPS else None
    return usage_csv(session, account.id, group, start, end)


# ---------------------------------------------------------------------------- refusals in words


def denial(c: Container, session: Session, exc: BillingError) -> tuple[str, str] | None:
    """A refusal as a person reads it (decision 0041): "You need Manage Server on Study Hall",
    naming the account by name and the permission in the portal's words. None: keep the
    service's own message."""
    account_id = exc.details.get("account_id")
    org_id = exc.details.get("org_id")
    account = session.get(BillingAccount, str(account_id)) if account_id else None
    if account is None and str(account_id or "").startswith("server:"):  # not opened yet
        return "You need Manage Server on this Discord server to manage its billing.", "Manage Server"
    if account is not None and account.kind == AccountKind.SERVER:
        need = f"Manage Server on {account.display_name}"
        return f"You need Manage Server on {account.display_name} to manage its billing.", need
    if account is not None and account.kind == AccountKind.ORGANIZATION:
        org_id = account.owner_ref
    if org_id:
        try:
            name = c.orgs.get_org(session, str(org_id)).name
        except NotFound:
            return None
        need = f"owner or billing admin of {name}"
        if "owner can" in exc.message:  # only an owner may grant, take away or remove ownership
            return f"{exc.message.rstrip('.')} of {name}.", f"owner of {name}"
        return f"You need to be an owner or billing admin of {name} to manage its billing.", need
    if account is not None and account.kind == AccountKind.PERSONAL:
        return "This is someone else's personal billing; only they can see it.", "the account's owner"
    return None
