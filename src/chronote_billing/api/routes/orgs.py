"""Organizations, members, linked servers, spend authorizations and the audit log (D7, D11).

Service clients act for the user named in `Chronote-Acting-User`; organization roles are
checked against our own tables, Manage Server is what the client states in
`Chronote-Manage-Guilds`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from chronote_billing.api.deps import ContainerDep, IdempotencyKeyDep, OrgsRead, OrgsWrite
from chronote_billing.api.responses import problems
from chronote_billing.core.errors import NotFound
from chronote_billing.core.validation import (
    AuthorizationId,
    CapCredits,
    DiscordId,
    Keyword,
    Moment,
    Name,
    OrgId,
)
from chronote_billing.orgs.schemas import (
    AuditEntryView,
    AuthorizationView,
    MembershipView,
    MemberView,
    OrgView,
    ServerView,
)
from chronote_billing.orgs.service import (
    UNSET,
    AlreadyMember,
    AuthorizationExists,
    AuthorizationRevoked,
    CannotChangeOwnAuthorization,
    LastOwner,
    NotAMember,
    ServerAlreadyLinked,
    ServerNotLinked,
    UnknownCaptureSource,
)

router = APIRouter(prefix="/v1", tags=["organizations"])


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OrgCreate(StrictModel):
    name: Name


class MemberAdd(StrictModel):
    user_id: DiscordId = Field(description="Discord user id.")
    role: Literal["owner", "billing_admin", "member"] = "member"


class RoleChange(StrictModel):
    role: Literal["owner", "billing_admin", "member"]


class ServerLink(StrictModel):
    guild_id: DiscordId


class AuthorizationCreate(StrictModel):
    subject_type: Literal["member", "server"]
    subject_id: DiscordId = Field(description="The member's Discord user id or the linked server's guild id.")
    monthly_cap_credits: CapCredits | None = Field(default=None, description="Null: no monthly cap.")
    capture_sources: list[Keyword] | None = Field(
        default=None, max_length=16, description="Null: every source."
    )
    valid_from: Moment | None = None
    valid_until: Moment | None = None


class AuthorizationUpdate(StrictModel):
    monthly_cap_credits: CapCredits | None = None
    capture_sources: list[Keyword] | None = Field(default=None, max_length=16)
    valid_until: Moment | None = None


@router.post(
    "/orgs",
    response_model=OrgView,
    status_code=201,
    summary="Create an organization (you become owner)",
    responses=problems(),
)
def create_org(
    body: OrgCreate, container: ContainerDep, principal: OrgsWrite, key: IdempotencyKeyDep
) -> OrgView:
    user = principal.require_user()
    return container.db.write(
        lambda s: container.orgs.create_org(s, actor_user_id=user, name=body.name, idempotency_key=key)
    )


@router.get(
    "/orgs",
    response_model=list[MembershipView],
    summary="Organizations of the acting user",
    responses=problems(),
)
def my_orgs(container: ContainerDep, principal: OrgsRead) -> list[MembershipView]:
    user = principal.require_user()
    return container.db.read(lambda s: container.orgs.memberships(s, user))


@router.get("/orgs/{org_id}", response_model=OrgView, summary="An organization", responses=problems(NotFound))
def get_org(org_id: OrgId, container: ContainerDep, principal: OrgsRead) -> OrgView:
    def work(session: Session) -> OrgView:
        return container.orgs.org_view_of(
            container.orgs.readable_org(session, principal, org_id, admin=False)
        )

    return container.db.read(work)


@router.get(
    "/orgs/{org_id}/members",
    response_model=list[MemberView],
    summary="Members and roles",
    responses=problems(NotFound),
)
def list_members(org_id: OrgId, container: ContainerDep, principal: OrgsRead) -> list[MemberView]:
    def work(session: Session) -> list[MemberView]:
        container.orgs.readable_org(session, principal, org_id, admin=True)
        return container.orgs.list_members(session, org_id)

    return container.db.read(work)


@router.post(
    "/orgs/{org_id}/members",
    response_model=MemberView,
    status_code=201,
    summary="Add a member",
    responses=problems(NotFound, AlreadyMember),
)
def add_member(
    org_id: OrgId, body: MemberAdd, container: ContainerDep, principal: OrgsWrite, key: IdempotencyKeyDep
) -> MemberView:
    user = principal.require_user()
    return container.db.write(
        lambda s: container.orgs.add_member(
            s, actor_user_id=user, org_id=org_id, user_id=body.user_id, role=body.role, idempotency_key=key
        )
    )


@router.patch(
    "/orgs/{org_id}/members/{user_id}",
    response_model=MemberView,
    summary="Change a member's role",
    responses=problems(NotFound, NotAMember, LastOwner),
)
def set_role(
    org_id: OrgId,
    user_id: DiscordId,
    body: RoleChange,
    container: ContainerDep,
    principal: OrgsWrite,
    key: IdempotencyKeyDep,
) -> MemberView:
    actor = principal.require_user()
    return container.db.write(
        lambda s: container.orgs.set_role(
            s, actor_user_id=actor, org_id=org_id, user_id=user_id, role=body.role, idempotency_key=key
        )
    )


@router.delete(
    "/orgs/{org_id}/members/{user_id}",
    response_model=MemberView,
    summary="Remove a member (their authorizations are revoked)",
    responses=problems(NotFound, NotAMember, LastOwner),
)
def remove_member(
    org_id: OrgId,
    user_id: DiscordId,
    container: ContainerDep,
    principal: OrgsWrite,
    key: IdempotencyKeyDep,
) -> MemberView:
    actor = principal.require_user()
    return container.db.write(
        lambda s: container.orgs.remove_member(
            s, actor_user_id=actor, org_id=org_id, user_id=user_id, idempotency_key=key
        )
    )


@router.get(
    "/orgs/{org_id}/servers",
    response_model=list[ServerView],
    summary="Linked servers",
    responses=problems(NotFound),
)
def list_servers(org_id: OrgId, container: ContainerDep, principal: OrgsRead) -> list[ServerView]:
    def work(session: Session) -> list[ServerView]:
        container.orgs.readable_org(session, principal, org_id, admin=True)
        return container.orgs.list_servers(session, org_id)

    return container.db.read(work)


@router.post(
    "/orgs/{org_id}/servers",
    response_model=ServerView,
    status_code=201,
    summary="Link a server (Manage Server on it and owner or billing_admin)",
    responses=problems(NotFound, ServerAlreadyLinked),
)
def link_server(
    org_id: OrgId, body: ServerLink, container: ContainerDep, principal: OrgsWrite, key: IdempotencyKeyDep
) -> ServerView:
    actor = principal.require_user()
    return container.db.write(
        lambda s: container.orgs.link_server(
            s,
            actor_user_id=actor,
            actor_manages_guild=body.guild_id in principal.managed_guilds,
            org_id=org_id,
            guild_id=body.guild_id,
            idempotency_key=key,
        )
    )


@router.delete(
    "/orgs/{org_id}/servers/{guild_id}",
    response_model=ServerView,
    summary="Unlink a server (its authorization is revoked)",
    responses=problems(NotFound, ServerNotLinked),
)
def unlink_server(
    org_id: OrgId,
    guild_id: DiscordId,
    container: ContainerDep,
    principal: OrgsWrite,
    key: IdempotencyKeyDep,
) -> ServerView:
    actor = principal.require_user()
    return container.db.write(
        lambda s: container.orgs.unlink_server(
            s,
            actor_user_id=actor,
            org_id=org_id,
            guild_id=guild_id,
            idempotency_key=key,
        )
    )


@router.get(
    "/orgs/{org_id}/authorizations",
    response_model=list[AuthorizationView],
    summary="Authorizations with this month's used, held and left",
    responses=problems(NotFound),
)
def list_authorizations(
    org_id: OrgId, container: ContainerDep, principal: OrgsRead
) -> list[AuthorizationView]:
    def work(session: Session) -> list[AuthorizationView]:
        container.orgs.readable_org(session, principal, org_id, admin=True)
        return container.orgs.list_authorizations(session, org_id)

    return container.db.read(work)


@router.post(
    "/orgs/{org_id}/authorizations",
    response_model=AuthorizationView,
    status_code=201,
    summary="Authorize a member or a linked server to spend",
    responses=problems(
        NotFound,
        NotAMember,
        ServerNotLinked,
        AuthorizationExists,
        CannotChangeOwnAuthorization,
        UnknownCaptureSource,
    ),
)
def create_authorization(
    org_id: OrgId,
    body: AuthorizationCreate,
    container: ContainerDep,
    principal: OrgsWrite,
    key: IdempotencyKeyDep,
) -> AuthorizationView:
    actor = principal.require_user()
    return container.db.write(
        lambda s: container.orgs.create_authorization(
            s,
            actor_user_id=actor,
            org_id=org_id,
            subject_type=body.subject_type,
            subject_id=body.subject_id,
            monthly_cap_credits=body.monthly_cap_credits,
            capture_sources=body.capture_sources,
            valid_from=body.valid_from,
            valid_until=body.valid_until,
            idempotency_key=key,
        )
    )


@router.patch(
    "/authorizations/{authorization_id}",
    response_model=AuthorizationView,
    summary="Change an authorization's cap, sources or end (only the fields sent)",
    responses=problems(NotFound, AuthorizationRevoked, CannotChangeOwnAuthorization, UnknownCaptureSource),
)
def update_authorization(
    authorization_id: AuthorizationId,
    body: AuthorizationUpdate,
    container: ContainerDep,
    principal: OrgsWrite,
    key: IdempotencyKeyDep,
) -> AuthorizationView:
    actor = principal.require_user()
    sent = body.model_fields_set
    return container.db.write(
        lambda s: container.orgs.update_authorization(
            s,
            actor_user_id=actor,
            authorization_id=authorization_id,
            idempotency_key=key,
            monthly_cap_credits=body.monthly_cap_credits if "monthly_cap_credits" in sent else UNSET,
            capture_sources=body.capture_sources if "capture_sources" in sent else UNSET,
            valid_until=body.valid_until if "valid_until" in sent else UNSET,
        )
    )


@router.post(
    "/authorizations/{authorization_id}/revoke",
    response_model=AuthorizationView,
    summary="Revoke at once for new holds (open holds may finish)",
    responses=problems(NotFound, AuthorizationRevoked, CannotChangeOwnAuthorization),
)
def revoke_authorization(
    authorization_id: AuthorizationId,
    container: ContainerDep,
    principal: OrgsWrite,
    key: IdempotencyKeyDep,
) -> AuthorizationView:
    actor = principal.require_user()
    return container.db.write(
        lambda s: container.orgs.revoke_authorization(
            s, actor_user_id=actor, authorization_id=authorization_id, idempotency_key=key
        )
    )


@router.get(
    "/orgs/{org_id}/audit",
    response_model=list[AuditEntryView],
    summary="Audit log, newest first",
    responses=problems(NotFound),
)
def audit_log(
    org_id: OrgId,
    container: ContainerDep,
    principal: OrgsRead,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditEntryView]:
    def work(session: Session) -> list[AuditEntryView]:
        container.orgs.readable_org(session, principal, org_id, admin=True)
        return container.orgs.audit_log(session, org_id, limit)

    return container.db.read(work)


__all__ = ["router"]
