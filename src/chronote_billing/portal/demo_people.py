"""The people of demo sign-in, read from `demo_people.json` beside this module.

Demo mode is the portal's own feature (sign-in without Discord, decision 0054); the people it
offers are data, so the portal imports no demo code and the demo seeding (a development tool)
seeds the same people and servers from the same file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True)
class DemoServer:
    key: str
    guild_id: str
    name: str


@dataclass(frozen=True)
class DemoPerson:
    key: str
    discord_user_id: str
    name: str
    manages: tuple[DemoServer, ...]  # the servers Discord would say this person manages


@dataclass(frozen=True)
class DemoIdentities:
    people: tuple[DemoPerson, ...]
    servers: tuple[DemoServer, ...]

    def person(self, key: str) -> DemoPerson | None:
        return next((p for p in self.people if p.key == key), None)

    def server(self, key: str) -> DemoServer:
        return next(s for s in self.servers if s.key == key)


@cache
def demo_identities() -> DemoIdentities:
    text = resources.files("chronote_billing.portal").joinpath("demo_people.json").read_text(encoding="utf-8")
    data = json.loads(text)
    servers = tuple(DemoServer(s["key"], s["guild_id"], s["name"]) for s in data["servers"])
    by_key = {s.key: s for s in servers}
    people = tuple(
        DemoPerson(p["key"], p["discord_user_id"], p["name"], tuple(by_key[k] for k in p["manages"]))
        for p in data["people"]
    )
    return DemoIdentities(people, servers)
