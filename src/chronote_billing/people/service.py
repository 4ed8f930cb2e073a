"""Names for Discord user ids.

Organizations add members by Discord id, and usage, audit and authorization records carry ids
only. A person's display name is learned when they sign in to the portal (Discord's
``global_name``, else their username) and shown beside their id to the admins who manage them;
someone who has never signed in shows as their id.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import Person

MAX_NAME_LENGTH = 100


def remember(session: Session, user_id: str, display_name: str, now: datetime) -> None:
    """Record (or refresh) the name a person goes by; a name equal to the id is not a name."""
    name = " ".join(display_name.split())[:MAX_NAME_LENGTH]
    if not name or name == user_id:
        return
    person = session.get(Person, user_id)
    if person is None:
        session.add(Person(discord_user_id=user_id, display_name=name, updated_at=now))
    elif person.display_name != name:
        person.display_name = name
        person.updated_at = now
    session.flush()


def names(session: Session, user_ids: Iterable[str]) -> dict[str, str]:
    """Known display names by Discord id; ids nobody has signed in with are left out."""
    wanted = sorted({u for u in user_ids if u})
    if not wanted:
        return {}
    rows = session.execute(
        select(Person.discord_user_id, Person.display_name).where(Person.discord_user_id.in_(wanted))
    )
    return {user_id: name for user_id, name in rows}
