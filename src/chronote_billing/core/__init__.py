"""Cross-domain building blocks: database, clock, ids, errors and idempotency."""
