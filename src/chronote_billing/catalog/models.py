"""Persistence of the catalog domain."""
