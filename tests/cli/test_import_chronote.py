"""`import-chronote`: today's guild subscriptions and comps into server accounts, once."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chronote_billing.accounts.models import BillingAccount
from chronote_billing.cli import output
from chronote_billing.cli.main import app
from chronote_billing.container import Container
from chronote_billing.core.errors import ValidationFailed
from chronote_billing.stripe_sync.importer import ChronoteImporter
from chronote_billing.stripe_sync.models import ChronoteImport
from tests.conftest import snowflake

EXAMPLE = Path(__file__).parents[1] / "data" / "chronote-export-example.json"


def fresh_export(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The documented example with ids of this test's own."""
    text = EXAMPLE.read_text()
    ids: dict[str, str] = {}
    for old in sorted(
        set(__import__("re").findall(r'"(3000000000000000\d\d|cus_Legacy\w+|sub_Legacy\w+)"', text))
    ):
        new = snowflake() if old.isdigit() else old.split("_")[0] + "_" + secrets.token_hex(6)
        ids[old] = new
        text = text.replace(f'"{old}"', f'"{new}"')
    path = tmp_path / "export.json"
    path.write_text(text)
    return path, ids


@pytest.fixture
def importer(db, clock, ledger, accounts) -> ChronoteImporter:  # type: ignore[no-untyped-def]
    return ChronoteImporter(db, clock, ledger, accounts)


def _account(db, guild: str) -> BillingAccount | None:  # type: ignore[no-untyped-def]
    from chronote_billing.accounts.service import AccountService

    return db.read(lambda s: AccountService().find(s, "server", guild))


def test_import_creates_server_accounts_and_a_second_run_imports_nothing(
    db, importer, ledger, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    path, ids = fresh_export(tmp_path)
    dry = importer.run(path, dry_run=True)
    assert dry.count("import") == 4 and dry.count("comp") == 1
    assert _account(db, ids["300000000000000001"]) is None  # the dry run wrote nothing

    report = importer.run(path)
    assert report.count("import") == 4 and report.count("comp") == 1
    solo = _account(db, ids["300000000000000001"])
    assert solo is not None and solo.stripe_customer_id == ids["cus_LegacySolo01"]
    shared = _account(db, ids["300000000000000002"])
    assert shared.stripe_customer_id is None  # a customer shared by two guilds is not linked
    assert any("not linked" in detail for _, _, detail in report.actions)

    from chronote_billing.catalog.service import load_catalog
    from chronote_billing.plans.service import current_plan

    def plan(guild: str) -> str:
        return db.read(
            lambda s: current_plan(s, _account(db, guild), importer.clock.now(), load_catalog()).id
        )

    assert plan(ids["300000000000000001"]) == "server_pro"
    assert plan(ids["300000000000000002"]) == "server_basic"
    assert plan(ids["300000000000000004"]) == "server_free"  # canceled, and its comp expired
    assert plan(ids["300000000000000005"]) == "server_pro"  # complimentary
    grants = db.read(lambda s: ledger.list_grants(s, solo.id))
    assert [(g.source, g.amount) for g in grants] == [("migration", 20_000_000)]

    again = importer.run(path)
    assert again.count("import") == 0 and again.count("comp") == 0
    assert again.count("skip") == 6
    assert db.read(lambda s: ledger.list_grants(s, solo.id)) == grants
    rows = db.read(lambda s: s.query(ChronoteImport).filter(ChronoteImport.account_id == solo.id).count())
    assert rows == 1


def test_invalid_export_is_refused_with_its_path(importer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(EXAMPLE.read_text())
    data["guildSubscriptions"][1]["tier"] = "gold"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ValidationFailed) as err:
        importer.run(bad)
    assert "guildSubscriptions.1.tier" in err.value.message
    with pytest.raises(ValidationFailed):
        importer.run(tmp_path / "missing.json")


def test_cli_dry_run_prints_the_plan(db, clock, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path, ids = fresh_export(tmp_path)
    output.set_container(Container(db=db, clock=clock))
    try:
        runner = CliRunner()
        result = runner.invoke(app, ["import-chronote", str(path), "--dry-run"])
        assert result.exit_code == 0, result.output
        assert "would import" in result.output and "(dry run)" not in result.output
        assert ids["300000000000000001"] in result.output
        assert _account(db, ids["300000000000000001"]) is None
        bad = runner.invoke(app, ["import-chronote", str(tmp_path / "nope.json")])
        assert bad.exit_code == 1 and "Traceback" not in bad.output
    finally:
        output.set_container(None)


def test_a_subscription_priced_by_a_pack_imports_as_its_tier_with_a_warning(db, importer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from chronote_billing.plans.models import PlanSubscription

    path, ids = fresh_export(tmp_path)
    data = json.loads(path.read_text())
    sub = data["guildSubscriptions"][0]
    sub["priceLookupKey"] = "chronote_credits_1000"  # a credit pack's price, not a plan's
    data["guildSubscriptions"] = [sub]
    data["compGrants"] = []
    path.write_text(json.dumps(data))
    report = importer.run(path)
    assert any("is not a plan price" in w for w in report.warnings), report.warnings
    account = _account(db, sub["guildId"])
    row = db.read(lambda s: s.get(PlanSubscription, account.id))
    assert (row.plan_id, row.interval, row.price_lookup_key) == (
        "server_pro",
        "month",
        "chronote_pro_monthly",
    )
