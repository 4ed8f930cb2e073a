"""Persistence of the usage domain."""
