"""A person's data (decision 0047): everything kept about them, as JSON or CSV."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response

from chronote_billing.accounts.service import check_snowflake
from chronote_billing.api.deps import AccountsRead, ContainerDep
from chronote_billing.api.responses import problems
from chronote_billing.core.validation import DiscordId
from chronote_billing.people.export import UnknownPerson, collect, require_self_or_operator, to_csv, to_json

router = APIRouter(prefix="/v1", tags=["people"])


@router.get(
    "/people/{user_id}/export",
    summary="Everything kept about a person (JSON or CSV)",
    description="For the person themselves (a client acting for them with `accounts:read`) or an "
    "operator. `unknown_person` when nothing is kept about them.",
    responses={200: {"content": {"application/json": {}, "text/csv": {}}}, **problems(UnknownPerson)},
)
def export_person(
    user_id: DiscordId,
    container: ContainerDep,
    principal: AccountsRead,
    format: Annotated[Literal["json", "csv"], Query(description="json (default) or csv")] = "json",
) -> Response:
    user = check_snowflake(user_id, "user_id")
    require_self_or_operator(principal, user)
    document = container.db.read(lambda s: collect(s, container.clock, container.ledger, user))
    name = f"chronote-billing-{user}.{format}"
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    if format == "csv":
        return Response(to_csv(document), media_type="text/csv; charset=utf-8", headers=headers)
    return Response(to_json(document), media_type="application/json", headers=headers)


__all__ = ["router"]
