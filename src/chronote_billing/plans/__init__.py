"""Plans: which plan is in force, the allowances it brings and when, trials, and proration.

Pure rules take facts and return decisions (`rules`, `periods`, `proration`); `service` and
`trials` gather the facts with queries and write the allowances and trial reservations; `models`
holds the plan subscription, complimentary plan and trial tables. Stripe is not known here:
`stripe_sync` mirrors Stripe's subscriptions into `PlanSubscription` and asks these rules for the
arithmetic. The catalog is always passed in by the caller (decision 0058).
"""
