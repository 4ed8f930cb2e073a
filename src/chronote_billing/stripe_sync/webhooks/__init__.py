"""Stripe webhooks: verified and stored by `inbox`, then applied by one handler module per event
family (`checkout`, `subscriptions`, `invoices`, `payment_intents`, `charges`), each reading
typed objects and writing through the domain's own functions (decisions 0009, 0055, 0056)."""
