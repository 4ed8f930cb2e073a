"""`make run`'s demo data loads through the real services, and loading it twice changes nothing."""

from datetime import timedelta

from sqlalchemy import func, select

from chronote_billing.container import Container
from chronote_billing.ledger.models import Transfer
from chronote_billing.ledger.verify import verify
from chronote_demo import seed as demo


def test_demo_data_loads_once_and_keeps_the_ledger_consistent(scratch_db, clock):
    container = Container(db=scratch_db, clock=clock)
    first = demo.load(container)
    assert "Acme" in first
    count = scratch_db.read(lambda s: s.execute(select(func.count()).select_from(Transfer)).scalar())
    clock.advance(timedelta(days=3))  # `make run` again another day on the same database
    assert "demo data reused" in demo.load(container)
    assert scratch_db.read(lambda s: s.execute(select(func.count()).select_from(Transfer)).scalar()) == count
    assert scratch_db.read(lambda s: verify(s)) == []

    def cy_funding(session):  # type: ignore[no-untyped-def]
        return container.usage.funding_sources(session, demo.DEMO_USERS["cy"][0])

    acme = [src for src in scratch_db.read(cy_funding) if src.kind == "authorization"]
    # Cy's 600-credit monthly cap, less the 32 started minutes of the demo recording it paid for.
    assert [(src.org_name, src.monthly_cap, src.used) for src in acme] == [("Acme", 600_000, 32_000)]
