"""Request dependencies: the container, the calling principal (with the scope its route needs)
and the idempotency key.

They are coroutines on purpose: FastAPI runs a plain function dependency on the thread pool, and
those hops cost more than the recording path's own work (docs/performance.md). The one blocking
step, reading an API key the process has not seen in the last seconds, goes to the pool itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from chronote_billing.access.service import Principal
from chronote_billing.accounts.service import check_snowflake
from chronote_billing.container import Container
from chronote_billing.core.errors import Unauthenticated, ValidationFailed
from chronote_billing.core.validation import DiscordId, GuildList, IdempotencyKeyText

from .observe import API_KEY_ID

bearer = HTTPBearer(auto_error=False, description="A Chronote Billing API key: `Bearer cbk_...`.")


async def get_container(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


ContainerDep = Annotated[Container, Depends(get_container)]


async def get_principal(
    request: Request,
    container: ContainerDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    acting_user: Annotated[
        DiscordId | None,
        Header(
            alias="Chronote-Acting-User",
            description="Discord user id the service client acts for.",
        ),
    ] = None,
    manage_guilds: Annotated[
        GuildList | None,
        Header(
            alias="Chronote-Manage-Guilds",
            description="Comma-separated guild ids on which the acting user has Manage Server, as checked with Discord by the client.",
        ),
    ] = None,
) -> Principal:
    if credentials is None:
        raise Unauthenticated("Send an API key as 'Authorization: Bearer cbk_...'.")
    key = container.api_keys.cached(credentials.credentials)
    if key is None:
        key = await run_in_threadpool(container.api_keys.known, credentials.credentials, container.db.read)
    setattr(request.state, API_KEY_ID, key.id)  # for the request's log line: the id, never the secret
    user = check_snowflake(acting_user, "Chronote-Acting-User") if acting_user else None
    guilds = frozenset(
        check_snowflake(g, "Chronote-Manage-Guilds") for g in (manage_guilds or "").split(",") if g.strip()
    )
    if guilds and user is None:
        raise ValidationFailed(
            "Chronote-Manage-Guilds needs Chronote-Acting-User.", field="Chronote-Manage-Guilds"
        )
    return Principal(
        kind="service", scopes=frozenset(key.scopes), user_id=user, managed_guilds=guilds, key_id=key.id
    )


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def idempotency_key(
    key: Annotated[
        IdempotencyKeyText,
        Header(
            alias="Idempotency-Key",
            description="Required on every write; a retry with the same key returns the first result.",
        ),
    ],
) -> str:
    return key


IdempotencyKeyDep = Annotated[str, Depends(idempotency_key)]


def scoped(scope: str, auto_recorder: bool = False) -> Callable[[Principal], Awaitable[Principal]]:
    """The principal, once it holds ``scope`` (else 403 ``permission_denied`` naming the scope).
    With ``auto_recorder``, a server's auto-recorder acting for nobody passes too: who may touch
    which recording is then the usage service's check (decision 0029)."""

    async def principal_with_scope(principal: PrincipalDep) -> Principal:
        if not (auto_recorder and principal.user_id is None and principal.is_auto_recorder):
            principal.require_scope(scope)
        return principal

    principal_with_scope.__name__ = f"scope_{scope.replace(':', '_')}"
    return principal_with_scope


# The scope a route needs is part of its signature: `principal: AccountsRead`.
AccountsRead = Annotated[Principal, Depends(scoped("accounts:read"))]
BillingWrite = Annotated[Principal, Depends(scoped("billing:write"))]
GrantsWrite = Annotated[Principal, Depends(scoped("grants:write"))]
HoldsWrite = Annotated[Principal, Depends(scoped("holds:write"))]
UsageWrite = Annotated[Principal, Depends(scoped("usage:write"))]
OrgsRead = Annotated[Principal, Depends(scoped("orgs:read"))]
OrgsWrite = Annotated[Principal, Depends(scoped("orgs:write"))]
Operator = Annotated[Principal, Depends(scoped("operator"))]
# Recording routes: their scope, or the auto-recorder without an acting user.
RecordingsRead = Annotated[Principal, Depends(scoped("accounts:read", auto_recorder=True))]
RecordingsWrite = Annotated[Principal, Depends(scoped("holds:write", auto_recorder=True))]
