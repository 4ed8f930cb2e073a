"""Everything that talks to Stripe: customers, checkout, plan changes, webhooks, reconcile."""
