"""Chronote Billing: plans, credits, organization spend authorizations and usage authorization."""

__version__ = "0.1.0"
