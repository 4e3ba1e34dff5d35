"""Accounts and request authentication: passwords, bearer tokens, browser sessions, CSRF, roles, audit.

The public face of the package; each part is its own module:

* :mod:`~covidet.api.auth.hashing`: argon2id password hashes and the sign-in check
  (:func:`authenticate`, the same work whether or not the user exists);
* :mod:`~covidet.api.auth.credentials`: issuing bearer tokens and browser sessions, the session
  cookie, logout;
* :mod:`~covidet.api.auth.current_user`: the request's user from a bearer token or the session cookie
  (with CSRF for unsafe methods), the role dependencies :data:`CurrentUser`, :data:`RadiologistUser`,
  :data:`AdminUser`, :data:`OptionalUser`;
* :mod:`~covidet.api.auth.audit`: :func:`audit_in` (an event committed with the change it records)
  and :func:`record_audit` (group commit, :mod:`covidet.api.audit_writer`).

``covidet.api.auth`` keeps every name it had before the split.
"""

from __future__ import annotations

from covidet.api.auth.audit import audit_in, client_ip, record_audit
from covidet.api.auth.credentials import (
    IssuedSession,
    IssuedToken,
    clear_session_cookie,
    end_session,
    issue_token,
    set_session_cookie,
    start_session,
)
from covidet.api.auth.current_user import (
    CSRF_FORM_FIELD,
    CSRF_HEADER,
    SESSION_COOKIE,
    TOKEN_URL,
    AdminUser,
    AuthenticatedUser,
    CurrentUser,
    OptionalUser,
    RadiologistUser,
    get_current_user,
    get_optional_user,
    require_roles,
)
from covidet.api.auth.hashing import MIN_PASSWORD_LENGTH, authenticate, hash_password, verify_password

__all__ = [
    "CSRF_FORM_FIELD",
    "CSRF_HEADER",
    "MIN_PASSWORD_LENGTH",
    "SESSION_COOKIE",
    "TOKEN_URL",
    "AdminUser",
    "AuthenticatedUser",
    "CurrentUser",
    "IssuedSession",
    "IssuedToken",
    "OptionalUser",
    "RadiologistUser",
    "audit_in",
    "authenticate",
    "clear_session_cookie",
    "client_ip",
    "end_session",
    "get_current_user",
    "get_optional_user",
    "hash_password",
    "issue_token",
    "record_audit",
    "require_roles",
    "set_session_cookie",
    "start_session",
    "verify_password",
]
