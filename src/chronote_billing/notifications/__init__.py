"""Outbound signed webhooks to Chronote through an outbox, and threshold alerts."""
