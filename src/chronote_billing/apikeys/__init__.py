"""Scoped API keys for Chronote's services (the bot, the desktop backend, the web app)."""
