"""`serve --port` and `demo --port` send Checkout and sign-in back to the port they serve."""

from __future__ import annotations

import pytest

from chronote_billing.cli import output
from chronote_billing.cli.server import use_public_url_of
from chronote_billing.config import Settings


def test_the_public_url_follows_the_port_unless_it_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    # Set then removed through monkeypatch, so the variable is restored after the test whatever
    # use_public_url_of writes into the environment.
    monkeypatch.setenv("CHRONOTE_PUBLIC_BASE_URL", "unset-me")
    monkeypatch.delenv("CHRONOTE_PUBLIC_BASE_URL")
    assert use_public_url_of("127.0.0.1", 8100) == "http://127.0.0.1:8100"
    assert Settings().public_base_url == "http://127.0.0.1:8100"
    monkeypatch.delenv("CHRONOTE_PUBLIC_BASE_URL")
    assert use_public_url_of("0.0.0.0", 9000) == "http://127.0.0.1:9000"
    monkeypatch.setenv("CHRONOTE_PUBLIC_BASE_URL", "https://billing.example.com")
    assert use_public_url_of("0.0.0.0", 9000) == "https://billing.example.com"
    output.set_container(None)
