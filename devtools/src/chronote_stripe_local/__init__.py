"""A local stand-in that speaks the part of Stripe's HTTP API this service uses."""
