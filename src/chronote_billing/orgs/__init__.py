"""Organizations: members, roles, linked servers, spend authorizations and their audit log."""
