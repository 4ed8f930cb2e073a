"""An organization's pages and actions: creating one, its billing page, members and roles,
linked servers, spend authorizations and their caps, alerts, auto-recharge, credit packs, the
Stripe customer portal, usage (page and CSV) and the statement download."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from chronote_billing.container import Container
from chronote_billing.core.errors import BillingError, NotFound
from chronote_billing.core.validation import AuthorizationId, CheckoutSessionId, DiscordId, OrgId
from chronote_billing.orgs.models import ROLES

from . import forms, presenters, views
from .auth import SignedIn, container_of, current_user
from .billed_accounts import org_url, resolve_org, statement_csv
from .purchases import auto_recharge_action, billing_page, checkout_status, pay
from .responses import act, error_page, login_redirect, page

router = APIRouter(prefix="/portal", include_in_schema=False)


@router.get("/orgs/new")
def org_new_page(request: Request) -> Response:
    return page(request, "org_new.html", views.new_org, "org:new")


@router.post("/orgs/new")
async def org_create(request: Request) -> Response:
    def work(c: Container, s: Session, user: SignedIn, form: forms.Form) -> Any:
        name = form.text("name", "Organization name")
        return c.orgs.create_org(s, actor_user_id=user.user_id, name=name, idempotency_key=form.key())

    return await act(
        request,
        "org.create",
        work,
        lambda org: org_url(org.id),
        lambda org: f"Organization {org.name} created.",
    )


@router.get("/org/{org_id}/billing")
def org_billing(request: Request, org_id: OrgId) -> Response:
    return billing_page(
        request,
        "org_billing.html",
        lambda c, s, u: views.org_billing(c, s, u, org_id),
        f"org:{org_id}",
        resolve_org(org_id),
        org_url(org_id),
    )


@router.get("/org/{org_id}/billing/checkout/{session_id}")
def org_checkout_status(request: Request, org_id: OrgId, session_id: CheckoutSessionId) -> Response:
    return checkout_status(
        request,
        session_id,
        lambda c, s, u: views.org_billing(c, s, u, org_id),
        resolve_org(org_id),
        org_url(org_id),
    )


@router.get("/org/{org_id}/billing/members")
def org_members(request: Request, org_id: OrgId) -> Response:
    return page(
        request, "org_members.html", lambda c, s, u: views.org_members(c, s, u, org_id), f"org:{org_id}"
    )


@router.get("/org/{org_id}/billing/authorizations")
def org_authorizations(request: Request, org_id: OrgId) -> Response:
    return page(
        request,
        "org_authorizations.html",
        lambda c, s, u: views.org_authorizations(c, s, u, org_id),
        f"org:{org_id}",
    )


@router.post("/org/{org_id}/billing/members/add")
async def org_member_add(request: Request, org_id: OrgId) -> Response:
    def work(c: Container, s: Session, user: SignedIn, form: forms.Form) -> Any:
        views.org_account(c, s, user, org_id)
        member = c.orgs.add_member(
            s,
            actor_user_id=user.user_id,
            org_id=org_id,
            user_id=form.text("user_id", "Discord user id"),
            role=form.choice("role", ROLES, "Role"),
            idempotency_key=form.key(),
        )
        return member, c.orgs.subject_name(s, "member", member.user_id)

    return await act(
        request,
        "org.member_add",
        work,
        lambda _: org_url(org_id, "members"),
        lambda r: f"Added {r[1]} as {presenters.role_label(r[0].role).lower()}.",
    )


@router.post("/org/{org_id}/billing/members/{member_id}/role")
async def org_member_role(request: Request, org_id: OrgId, member_id: DiscordId) -> Response:
    def work(c: Container, s: Session, user: SignedIn, form: forms.Form) -> Any:
        views.org_account(c, s, user, org_id)
        member = c.orgs.set_role(
            s,
            actor_user_id=user.user_id,
            org_id=org_id,
            user_id=member_id,
            role=form.choice("role", ROLES, "Role"),
            idempotency_key=form.key(),
        )
        return member, c.orgs.subject_name(s, "member", member.user_id)

    return await act(
        request,
        "org.member_role",
        work,
        lambda _: org_url(org_id, "members"),
        lambda r: f"{r[1]} is now {presenters.role_label(r[0].role).lower()}.",
    )


@router.post("/org/{org_id}/billing/members/{member_id}/remove")
async def org_member_remove(request: Request, org_id: OrgId, member_id: DiscordId) -> Response:
    def work(c: Container, s: Session, user: SignedIn, form: forms.Form) -> Any:
        views.org_account(c, s, user, org_id)
        member = c.orgs.remove_member(
            s, actor_user_id=user.user_id, org_id=org_id, user_id=member_id, idempotency_key=form.key()
        )
        return member, c.orgs.subject_name(s, "member", member.user_id)

    return await act(
        request,
        "org.member_remove",
        work,
        lambda _: org_url(org_id, "members"),
        lambda r: f"Removed {r[1]}; their authorizations were revoked.",
    )


@router.post("/org/{org_id}/billing/servers/link")
async def org_server_link(request: Request, org_id: OrgId) -> Response:
    def work(c: Container, s: Session, user: SignedIn, form: forms.Form) -> Any:
        views.org_account(c, s, user, org_id)
        guild_id = form.text("guild_id", "Server")
        return c.orgs.link_server(
            s,
            actor_user_id=user.user_id,
            actor_manages_guild=guild_id in user.principal.managed_guilds,
            org_id=org_id,
            guild_id=guild_id,
            idempotency_key=form.key(),
        )

    return await act(
        request, "org.server_link", work, lambda _: org_url(org_id), "Server linked.", refresh_guilds=True
    )


@router.post("/org/{org_id}/billing/servers/{guild_id}/unlink")
async def org_server_unlink(request: Request, org_id: OrgId, guild_id: DiscordId) -> Response:
    def work(c: Container, s: Session, user: SignedIn, form: forms.Form) -> Any:
        views.org_account(c, s, user, org_id)
        return c.orgs.unlink_server(
            s, actor_user_id=user.user_id, org_id=org_id, guild_id=guild_id, idempotency_key=form.key()
        )

    return await act(
        request,
        "org.server_unlink",
        work,
        lambda _: org_url(org_id),
        "Server unlinked; its authorization was revoked.",
    )


def _sources(form: forms.Form) -> list[str] | None:
    """Ticked capture sources; none ticked means every source of the subject's kind."""
    return form.values("capture_sources") or None


@router.post("/org/{org_id}/billing/authorizations/create")
async def org_authorization_create(request: Request, org_id: OrgId) -> Response:
    def work(c: Container, s: Session, user: SignedIn, form: forms.Form) -> Any:
        views.org_account(c, s, user, org_id)
        subject = form.text("subject", "Who may spend")
        subject_type, _, subject_id = subject.partition(":")
        return c.orgs.create_authorization(
            s,
            actor_user_id=user.user_id,
            org_id=org_id,
            subject_type=subject_type,
            subject_id=subject_id,
            monthly_cap_credits=form.whole("monthly_cap_credits", "Monthly cap", required=False),
            capture_sources=_sources(form),
            valid_from=form.day("valid_from", "Valid from"),
            valid_until=form.day("valid_until", "Valid until", end_of_day=True),
            idempotency_key=form.key(),
        )

    return await act(
        request,
        "org.authorization_create",
        work,
        lambda _: org_url(org_id, "authorizations"),
        "Authorization created.",
    )


def _authorization_in(c: Container, s: Session, org_id: str, authorization_id: str) -> None:
    if c.orgs.get_authorization(s, authorization_id).org_id != org_id:
        raise NotFound(f"No authorization '{authorization_id}' in this organization.")


@router.post("/org/{org_id}/billing/authorizations/{authorization_id}/cap")
async def org_authorization_cap(
    request: Request, org_id: OrgId, authorization_id: AuthorizationId
) -> Response:
    def work(c: Container, s: Session, user: SignedIn, form: forms.Form) -> Any:
        views.org_account(c, s, user, org_id)
        _authorization_in(c, s, org_id, authorization_id)
        view = c.orgs.update_authorization(
            s,
            actor_user_id=user.user_id,
            authorization_id=authorization_id,
            monthly_cap_credits=form.whole("monthly_cap_credits", "Monthly cap", required=False),
            idempotency_key=form.key(),
        )
        return presenters.cap_notice(view, c.orgs.subject_name(s, view.subject_type, view.subject_id))

    return await act(
        request,
        "org.authorization_cap",
        work,
        lambda _: org_url(org_id, "authorizations"),
        lambda notice: notice,
    )


@router.post("/org/{org_id}/billing/authorizations/{authorization_id}/revoke")
async def org_authorization_revoke(
    request: Request, org_id: OrgId, authorization_id: AuthorizationId
) -> Response:
    def work(c: Container, s: Session, user: SignedIn, form: forms.Form) -> Any:
        views.org_account(c, s, user, org_id)
        _authorization_in(c, s, org_id, authorization_id)
        return c.orgs.revoke_authorization(
            s, actor_user_id=user.user_id, authorization_id=authorization_id, idempotency_key=form.key()
        )

    return await act(
        request,
        "org.authorization_revoke",
        work,
        lambda _: org_url(org_id, "authorizations"),
        "Authorization revoked.",
    )


@router.post("/org/{org_id}/billing/alerts")
async def org_alerts(request: Request, org_id: OrgId) -> Response:
    def work(c: Container, s: Session, user: SignedIn, form: forms.Form) -> Any:
        _, account = views.org_account(c, s, user, org_id)
        return c.notifications.set_alert_settings(
            s,
            account_id=account.id,
            low_balance_threshold_credits=form.whole("threshold_credits", "Alert threshold", required=False),
            idempotency_key=form.key(),
        )

    return await act(request, "org.alerts", work, lambda _: org_url(org_id), "Low-balance alert saved.")


@router.post("/org/{org_id}/billing/auto-recharge")
async def org_auto_recharge(request: Request, org_id: OrgId) -> Response:
    return await auto_recharge_action(
        request, "org.auto_recharge", lambda c, s, u: views.org_account(c, s, u, org_id)[1], org_url(org_id)
    )


@router.post("/org/{org_id}/billing/packs")
async def org_pack(request: Request, org_id: OrgId) -> Response:
    return await pay(request, "org.pack", resolve_org(org_id), "pack", org_url(org_id))


@router.post("/org/{org_id}/billing/manage")
async def org_manage(request: Request, org_id: OrgId) -> Response:
    return await pay(request, "org.portal", resolve_org(org_id), "portal", org_url(org_id))


@router.get("/org/{org_id}/billing/usage")
def org_usage(request: Request, org_id: OrgId) -> Response:
    params = request.query_params
    return page(
        request,
        "org_usage.html",
        lambda c, s, u: views.org_usage(
            c, s, u, org_id, params.get("group_by"), params.get("since"), params.get("until")
        ),
        f"org:{org_id}",
    )


@router.get("/org/{org_id}/billing/usage.csv")
def org_usage_csv(request: Request, org_id: OrgId) -> Response:
    user = current_user(request)
    if user is None:
        return login_redirect(request)
    c = container_of(request)
    params = request.query_params
    try:
        body = c.db.read(
            lambda s: views.org_usage_csv(
                c, s, user, org_id, params.get("group_by"), params.get("since"), params.get("until")
            )
        )
    except BillingError as exc:
        return error_page(request, user, exc)
    group = params.get("group_by")
    name = f"usage-{org_id}-{group if group in views.USAGE_GROUPS else 'lines'}.csv"
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get("/org/{org_id}/billing/statement.csv")
def org_statement_csv(request: Request, org_id: OrgId) -> Response:
    return statement_csv(request, resolve_org(org_id), f"org-{org_id}")
