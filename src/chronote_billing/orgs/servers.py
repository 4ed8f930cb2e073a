"""Servers linked to an organization (D7): linking needs Manage Server on it in Discord and an
admin role; unlinking revokes the server's authorizations."""

from __future__ import annotations

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from chronote_billing.accounts.models import AccountKind
from chronote_billing.accounts.service import check_snowflake
from chronote_billing.core import idempotency
from chronote_billing.core.errors import PermissionDenied

from .base import OrgBase
from .errors import ServerAlreadyLinked, ServerNotLinked
from .models import OrgServer
from .schemas import ServerView


class Servers(OrgBase):
    def list_servers(self, session: Session, org_id: str) -> list[ServerView]:
        self.get_org(session, org_id)
        rows = session.execute(
            select(OrgServer).where(OrgServer.org_id == org_id).order_by(OrgServer.created_at)
        ).scalars()
        return [self._server_view(session, s) for s in rows]

    def link_server(
        self,
        session: Session,
        *,
        actor_user_id: str,
        actor_manages_guild: bool,
        org_id: str,
        guild_id: str,
        idempotency_key: str,
    ) -> ServerView:
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        guild = check_snowflake(guild_id, "guild_id")
        params = {"org_id": org_id, "guild_id": guild, "actor": actor_user_id}
        self._lock_org(session, org_id)
        self._require_admin(session, org_id, actor_user_id)
        if not actor_manages_guild:
            raise PermissionDenied(
                f"Linking {self.subject_name(session, 'server', guild)} needs Manage Server on it in Discord.",
                missing_permission=f"Manage Server on guild {guild}",
            )
        once = idempotency.Once(
            ServerView, idempotency.scope_of("orgs.link_server", org_id), key, params, now
        )
        if (prior := once.prior(session)) is not None:
            return prior
        # Two organizations linking one server at once queue on the server's account row; the
        # second then finds the first's link instead of failing on the insert.
        server_account = self.accounts.get_or_create(session, AccountKind.SERVER, guild)
        self.accounts.lock_row(session, server_account.id)
        existing = self.server_link(session, guild)
        if existing is not None:
            raise ServerAlreadyLinked(
                f"{self.subject_name(session, 'server', guild)} is already linked to an organization"
                + (" (this one)." if existing.org_id == org_id else "; unlink it there first."),
                guild_id=guild,
            )
        session.execute(
            insert(OrgServer).values(guild_id=guild, org_id=org_id, linked_by=actor_user_id, created_at=now)
        )
        self._audit(session, org_id, actor_user_id, "server.linked", guild, None, {"guild_id": guild})
        link = self.server_link(session, guild)
        assert link is not None
        return once.remember(session, self._server_view(session, link))

    def unlink_server(
        self,
        session: Session,
        *,
        actor_user_id: str,
        org_id: str,
        guild_id: str,
        idempotency_key: str,
    ) -> ServerView:
        """Unlink a server (admins of the organization; no Discord permission needed, decision
        0021); its authorizations are revoked."""
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        guild = str(guild_id)
        params = {"org_id": org_id, "guild_id": guild, "actor": actor_user_id}
        self._lock_org(session, org_id)
        self._require_admin(session, org_id, actor_user_id)
        once = idempotency.Once(
            ServerView, idempotency.scope_of("orgs.unlink_server", org_id), key, params, now
        )
        if (prior := once.prior(session)) is not None:
            return prior
        link = self.server_link(session, guild)
        if link is None or link.org_id != org_id:
            raise ServerNotLinked(
                f"{self.subject_name(session, 'server', guild)} is not linked to "
                f"{self.get_org(session, org_id).name}.",
                guild_id=guild,
            )
        view = self._server_view(session, link)
        for auth in self._open_authorizations(session, org_id, "server", guild):
            self._revoke(session, auth, actor_user_id, now, "server unlinked")
        session.execute(delete(OrgServer).where(OrgServer.guild_id == guild))
        self._audit(session, org_id, actor_user_id, "server.unlinked", guild, {"guild_id": guild}, None)
        return once.remember(session, view)
