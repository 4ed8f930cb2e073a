"""Organizations and their members (D7): creating an organization, adding and removing members,
changing roles; an organization always keeps an owner."""

from __future__ import annotations

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from chronote_billing.accounts.models import AccountKind, BillingAccount
from chronote_billing.accounts.service import check_snowflake
from chronote_billing.core import idempotency
from chronote_billing.core.errors import ValidationFailed
from chronote_billing.core.ids import new_id
from chronote_billing.people import service as people

from . import rules
from .base import OrgBase
from .errors import AlreadyMember, LastOwner
from .models import Organization, OrgMember
from .schemas import MembershipView, MemberView, OrgView


class Organizations(OrgBase):
    def create_org(self, session: Session, *, actor_user_id: str, name: str, idempotency_key: str) -> OrgView:
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        actor = check_snowflake(actor_user_id, "actor_user_id")
        name = str(name or "").strip()
        if not 1 <= len(name) <= 200:
            raise ValidationFailed("An organization needs a name of 1 to 200 characters.", field="name")
        params = {"actor": actor, "name": name}
        # The creator's personal account row serializes their concurrent duplicates.
        personal = self.accounts.get_or_create(session, AccountKind.PERSONAL, actor)
        session.execute(select(BillingAccount.id).where(BillingAccount.id == personal.id).with_for_update())
        once = idempotency.Once(OrgView, idempotency.scope_of("orgs.create", actor), key, params, now)
        if (prior := once.prior(session)) is not None:
            return prior
        org_id = new_id("org")
        account = self.accounts.get_or_create(session, AccountKind.ORGANIZATION, org_id, name)
        session.execute(
            insert(Organization).values(
                id=org_id, name=name, billing_account_id=account.id, created_by=actor, created_at=now
            )
        )
        session.execute(
            insert(OrgMember).values(
                org_id=org_id, user_id=actor, role="owner", added_by=actor, created_at=now
            )
        )
        self._audit(session, org_id, actor, "org.created", org_id, None, {"name": name, "owner": actor})
        self._audit(session, org_id, actor, "member.added", actor, None, {"role": "owner"})
        return once.remember(session, self._org_view(self.get_org(session, org_id)), org_id)

    def org_view_of(self, org: Organization) -> OrgView:
        return self._org_view(org)

    def org_view(self, session: Session, org_id: str) -> OrgView:
        return self._org_view(self.get_org(session, org_id))

    def orgs_for_user(self, session: Session, user_id: str) -> list[tuple[OrgView, str]]:
        rows = session.execute(
            select(Organization, OrgMember.role)
            .join(OrgMember, OrgMember.org_id == Organization.id)
            .where(OrgMember.user_id == str(user_id))
            .order_by(Organization.created_at, Organization.id)
        ).all()
        return [(self._org_view(org), role) for org, role in rows]

    def memberships(self, session: Session, user_id: str) -> list[MembershipView]:
        return [MembershipView(org=o, role=r) for o, r in self.orgs_for_user(session, user_id)]

    def list_orgs(self, session: Session) -> list[OrgView]:
        rows = session.execute(select(Organization).order_by(Organization.created_at)).scalars()
        return [self._org_view(o) for o in rows]

    def list_members(self, session: Session, org_id: str) -> list[MemberView]:
        self.get_org(session, org_id)
        rows = session.execute(
            select(OrgMember)
            .where(OrgMember.org_id == org_id)
            .order_by(OrgMember.created_at, OrgMember.user_id)
        ).scalars()
        members = [rules.member_view(m) for m in rows]
        known = people.names(session, [m.user_id for m in members])
        return [m.model_copy(update={"display_name": known.get(m.user_id)}) for m in members]

    def add_member(
        self,
        session: Session,
        *,
        actor_user_id: str,
        org_id: str,
        user_id: str,
        role: str,
        idempotency_key: str,
    ) -> MemberView:
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        user = check_snowflake(user_id, "user_id")
        rules.check_role(role)
        params = {"org_id": org_id, "user_id": user, "role": role, "actor": actor_user_id}
        self._lock_org(session, org_id)
        actor_role = self._require_admin(session, org_id, actor_user_id)
        once = idempotency.Once(MemberView, idempotency.scope_of("orgs.add_member", org_id), key, params, now)
        if (prior := once.prior(session)) is not None:
            return prior
        if role == "owner":
            rules.require_owner_for(actor_role, org_id, "Only an owner can add another owner.")
        if rules.member_role(session, org_id, user) is not None:
            raise AlreadyMember(
                f"{self.subject_name(session, 'member', user)} is already a member of "
                f"{self.get_org(session, org_id).name}.",
                user_id=user,
            )
        session.execute(
            insert(OrgMember).values(
                org_id=org_id, user_id=user, role=role, added_by=actor_user_id, created_at=now
            )
        )
        self._audit(session, org_id, actor_user_id, "member.added", user, None, {"role": role})
        return once.remember(session, self._member(session, org_id, user))

    def remove_member(
        self, session: Session, *, actor_user_id: str, org_id: str, user_id: str, idempotency_key: str
    ) -> MemberView:
        """Remove a member (or leave, for oneself); their authorizations are revoked with them."""
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        user = str(user_id)
        params = {"org_id": org_id, "user_id": user, "actor": actor_user_id}
        self._lock_org(session, org_id)
        once = idempotency.Once(
            MemberView, idempotency.scope_of("orgs.remove_member", org_id), key, params, now
        )
        if (prior := once.prior(session)) is not None:
            return prior
        actor_role = (
            rules.member_role(session, org_id, actor_user_id)
            if actor_user_id == user
            else self._require_admin(session, org_id, actor_user_id)
        )
        current = self._member(session, org_id, user)
        if current.role == "owner":
            rules.require_owner_for(actor_role or "", org_id, "Only an owner can remove an owner.")
            self._check_not_last_owner(session, org_id, user)
        for auth in self._open_authorizations(session, org_id, "member", user):
            self._revoke(session, auth, actor_user_id, now, "member removed")
        session.execute(delete(OrgMember).where(OrgMember.org_id == org_id, OrgMember.user_id == user))
        self._audit(session, org_id, actor_user_id, "member.removed", user, {"role": current.role}, None)
        return once.remember(session, current)

    def set_role(
        self,
        session: Session,
        *,
        actor_user_id: str,
        org_id: str,
        user_id: str,
        role: str,
        idempotency_key: str,
    ) -> MemberView:
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        rules.check_role(role)
        user = str(user_id)
        params = {"org_id": org_id, "user_id": user, "role": role, "actor": actor_user_id}
        self._lock_org(session, org_id)
        actor_role = self._require_admin(session, org_id, actor_user_id)
        once = idempotency.Once(MemberView, idempotency.scope_of("orgs.set_role", org_id), key, params, now)
        if (prior := once.prior(session)) is not None:
            return prior
        current = self._member(session, org_id, user)
        if "owner" in (role, current.role):
            rules.require_owner_for(
                actor_role, org_id, "Only an owner can grant or take away the owner role."
            )
        if current.role == "owner" and role != "owner":
            self._check_not_last_owner(session, org_id, user)
        if role != current.role:
            session.execute(
                update(OrgMember)
                .where(OrgMember.org_id == org_id, OrgMember.user_id == user)
                .values(role=role)
            )
            self._audit(
                session,
                org_id,
                actor_user_id,
                "member.role_changed",
                user,
                {"role": current.role},
                {"role": role},
            )
        return once.remember(session, self._member(session, org_id, user))

    def _check_not_last_owner(self, session: Session, org_id: str, user_id: str) -> None:
        owners = (
            session.execute(
                select(OrgMember.user_id).where(OrgMember.org_id == org_id, OrgMember.role == "owner")
            )
            .scalars()
            .all()
        )
        if list(owners) == [user_id]:
            raise LastOwner(
                f"{self.subject_name(session, 'member', user_id)} is the last owner of "
                f"{self.get_org(session, org_id).name}; make someone else owner first.",
                user_id=user_id,
            )
