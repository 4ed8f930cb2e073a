"""Billing accounts: one per payer (a Discord user, a Discord server, an organization)."""
