"""The credit ledger: double-entry accounts, append-only transfers, grants (lots), two-phase
holds, spend caps and the invariants that ``verify`` checks."""
