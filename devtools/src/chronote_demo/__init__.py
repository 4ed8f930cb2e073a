"""The demo of `make run`: its data, and the `demo` and `stripe-local` commands it adds to the
operator CLI when this development distribution is installed (decision 0054)."""
