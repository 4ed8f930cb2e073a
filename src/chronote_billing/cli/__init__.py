"""The operator CLI: translates commands to service calls and errors to one-line messages."""
