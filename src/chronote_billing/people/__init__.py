"""The people Chronote Billing knows by Discord user id, and the names they go by."""
