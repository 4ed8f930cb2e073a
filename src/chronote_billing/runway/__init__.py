"""Runway (decision 0046): when an account's credits run out, and when an organization's
authorizations reach their monthly caps, at the last 14 days' pace."""
