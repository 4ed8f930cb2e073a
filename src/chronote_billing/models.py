"""Every domain's tables, imported once so Alembic and tests see the whole schema."""

from chronote_billing import retention as _retention  # noqa: F401 - the purge's index
from chronote_billing.accounts import models as _accounts  # noqa: F401
from chronote_billing.apikeys import models as _apikeys  # noqa: F401
from chronote_billing.catalog import models as _catalog  # noqa: F401
from chronote_billing.core import idempotency as _idempotency  # noqa: F401
from chronote_billing.core.db import Base
from chronote_billing.ledger import models as _ledger  # noqa: F401
from chronote_billing.notifications import models as _notifications  # noqa: F401
from chronote_billing.orgs import models as _orgs  # noqa: F401
from chronote_billing.people import models as _people  # noqa: F401
from chronote_billing.plans import models as _plans  # noqa: F401
from chronote_billing.stripe_sync import models as _stripe_sync  # noqa: F401
from chronote_billing.usage import models as _usage  # noqa: F401

metadata = Base.metadata
