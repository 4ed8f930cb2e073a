"""Persistence of the notifications domain."""
