"""Persistence of the stripe_sync domain."""
