"""Stripe as an integration (decision 0055): `client` is the one module of the service that
imports Stripe's SDK; `objects` are the typed shapes read from Stripe's payloads."""
