"""Persistence of the orgs domain."""
