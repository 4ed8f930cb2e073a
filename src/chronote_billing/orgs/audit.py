"""The audit log of an organization, read with the names of the people and servers it mentions."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from chronote_billing.core.errors import ValidationFailed
from chronote_billing.people import service as people

from . import audit_text
from .base import OrgBase
from .models import OrgAuditEntry
from .schemas import AuditEntryView


class AuditReads(OrgBase):
    def audit_log(self, session: Session, org_id: str, limit: int = 100) -> list[AuditEntryView]:
        if not 1 <= limit <= 1000:
            raise ValidationFailed("limit must be from 1 to 1000.", field="limit")
        self.get_org(session, org_id)
        rows = list(
            session.execute(
                select(OrgAuditEntry)
                .where(OrgAuditEntry.org_id == org_id)
                .order_by(OrgAuditEntry.id.desc())
                .limit(limit)
            ).scalars()
        )
        user_ids = {r.actor for r in rows}
        guild_ids: set[str] = set()
        for r in rows:
            user_ids.update(audit_text.mentioned_people(r.action, r.target, r.before, r.after))
            guild_ids.update(audit_text.mentioned_servers(r.action, r.target, r.before, r.after))
        names = people.names(session, user_ids)
        servers = self.server_names(session, guild_ids)
        return [
            AuditEntryView(
                id=r.id,
                org_id=r.org_id,
                actor=r.actor,
                actor_name=names.get(r.actor),
                action=r.action,
                target=r.target,
                description=audit_text.describe(r.action, r.target, r.before, r.after, names, servers),
                before=r.before,
                after=r.after,
                at=r.at,
            )
            for r in rows
        ]
