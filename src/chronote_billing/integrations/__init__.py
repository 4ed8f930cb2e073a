"""Integrations with outside services, each behind one module that speaks its SDK."""
