"""Usage: payer attribution, recording holds, metered events and usage reports."""
