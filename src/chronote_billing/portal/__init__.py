"""The billing portal for people: Discord sign-in, account switcher, billing pages."""
