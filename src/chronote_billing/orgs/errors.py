"""The refusals of the organization rules, each with its stable code."""

from __future__ import annotations

from chronote_billing.core.errors import Conflict, NotFound, PermissionDenied, ValidationFailed


class UnknownCaptureSource(ValidationFailed):
    code = "unknown_capture_source"
    title = "Unknown capture source"


class UnknownRole(ValidationFailed):
    code = "unknown_role"
    title = "Unknown organization role"


class CannotChangeOwnAuthorization(PermissionDenied):
    code = "cannot_change_own_authorization"
    title = "Nobody can change their own spend authorization"


class AlreadyMember(Conflict):
    code = "already_member"
    title = "Already a member"


class NotAMember(NotFound):
    code = "not_a_member"
    title = "Not a member of this organization"


class LastOwner(Conflict):
    code = "last_owner"
    title = "An organization always keeps an owner"


class ServerAlreadyLinked(Conflict):
    code = "server_already_linked"
    title = "Server already linked to an organization"


class ServerNotLinked(NotFound):
    code = "server_not_linked"
    title = "Server not linked to this organization"


class AuthorizationExists(Conflict):
    code = "authorization_exists"
    title = "The subject already has an authorization"


class AuthorizationRevoked(Conflict):
    code = "authorization_revoked"
    title = "Authorization revoked"
