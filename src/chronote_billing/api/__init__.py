"""The HTTP edge: translates requests to service calls and domain errors to problem+json."""
