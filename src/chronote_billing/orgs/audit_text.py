"""Audit entries as sentences a person reads (decision 0041): what changed, by name.

Pure: the entry's action, target and before/after states, and the names known for the people
and servers it mentions, give one sentence such as "cap for Cy: 600 → 400 credits". Ids stand in
for names nobody knows yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from chronote_billing.credits_text import credits_phrase, whole_credits

ROLE_WORDS = {"owner": "owner", "billing_admin": "billing admin", "member": "member"}
SOURCE_WORDS = {
    "discord_voice": "Discord voice",
    "desktop": "Desktop",
    "web": "Web",
    "mobile": "Mobile",
    "quick_capture": "Quick capture",
    "upload": "Upload",
}


def subject_name(
    subject_type: str | None, subject_id: str | None, people: Mapping[str, str], servers: Mapping[str, str]
) -> str:
    if not subject_id:
        return "someone"
    if subject_type == "server":
        return servers.get(subject_id) or f"server {subject_id}"
    return people.get(subject_id) or subject_id


def _cap(value: Any) -> str:
    return "no cap" if value is None else credits_phrase(int(value))


def _cap_number(value: Any) -> str:
    return "no cap" if value is None else whole_credits(int(value))


def _sources(value: Any) -> str:
    if value is None:
        return "every source"
    return ", ".join(SOURCE_WORDS.get(s, s) for s in value) or "no source"


def _day(value: Any) -> str:
    if not value:
        return "no end"
    try:
        return datetime.fromisoformat(str(value)).strftime("%b %-d, %Y")
    except ValueError:
        return str(value)


def _role(value: Any) -> str:
    return ROLE_WORDS.get(str(value), str(value).replace("_", " "))


def describe(
    action: str,
    target: str,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    people: Mapping[str, str],
    servers: Mapping[str, str],
) -> str:
    """One sentence for an audit entry, without its actor (shown beside it)."""
    before, after = before or {}, after or {}
    state = after or before
    who = subject_name(state.get("subject_type"), state.get("subject_id"), people, servers)
    if action == "org.created":
        return f"created the organization {after.get('name', '')}".rstrip()
    if action == "member.added":
        return f"added {people.get(target, target)} as {_role(after.get('role'))}"
    if action == "member.removed":
        return f"removed {people.get(target, target)} ({_role(before.get('role'))})"
    if action == "member.role_changed":
        return (
            f"role of {people.get(target, target)}: {_role(before.get('role'))} → {_role(after.get('role'))}"
        )
    if action == "server.linked":
        return f"linked the server {servers.get(target) or target}"
    if action == "server.unlinked":
        return f"unlinked the server {servers.get(target) or target}"
    if action == "authorization.created":
        cap = after.get("monthly_cap")
        until = after.get("valid_until")
        return (
            f"authorized {who} to spend: {'no monthly cap' if cap is None else _cap(cap) + ' a month'}, "
            f"{_sources(after.get('capture_sources'))}" + (f", until {_day(until)}" if until else "")
        )
    if action == "authorization.revoked":
        why = after.get("why")
        return f"revoked the authorization of {who}" + (f" ({why})" if why else "")
    if action == "authorization.updated":
        changes = []
        if before.get("monthly_cap") != after.get("monthly_cap"):
            changes.append(
                f"cap for {who}: {_cap_number(before.get('monthly_cap'))} → {_cap(after.get('monthly_cap'))}"
            )
        if before.get("capture_sources") != after.get("capture_sources"):
            changes.append(
                f"sources for {who}: {_sources(before.get('capture_sources'))} → "
                f"{_sources(after.get('capture_sources'))}"
            )
        if before.get("valid_until") != after.get("valid_until"):
            changes.append(
                f"end of {who}'s authorization: {_day(before.get('valid_until'))} → "
                f"{_day(after.get('valid_until'))}"
            )
        return "; ".join(changes) or f"changed the authorization of {who}"
    return f"{action.replace('.', ' ').replace('_', ' ')} {target}"


def mentioned_people(
    action: str, target: str, before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
) -> list[str]:
    """The Discord user ids an entry names, so a caller can look their names up at once."""
    ids = []
    if action.startswith("member."):
        ids.append(target)
    for state in (before or {}, after or {}):
        if state.get("subject_type") == "member" and state.get("subject_id"):
            ids.append(str(state["subject_id"]))
        if state.get("owner"):
            ids.append(str(state["owner"]))
    return ids


def mentioned_servers(
    action: str, target: str, before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
) -> list[str]:
    ids = [target] if action.startswith("server.") else []
    for state in (before or {}, after or {}):
        if state.get("subject_type") == "server" and state.get("subject_id"):
            ids.append(str(state["subject_id"]))
    return ids
