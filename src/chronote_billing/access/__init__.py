"""Who may see or manage which billing account (D11)."""
