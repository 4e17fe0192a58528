"""Whose a session is, read from its id: the session-id namespace of tenants.

A session id of tenant ``acme`` is ``acme:<id>``; one without a colon is the ``default``
tenant's. The gateway qualifies the id a client asks for when it starts a session (``call-7``
from tenant ``acme`` is ``acme:call-7`` on the bus and in `started`), so two tenants never share
a session id, and any gateway (or a downstream reader of the report topic) tells a session's
tenant from its id alone, with no lookup. Tenant names of credentials hold no colon
(`topics.api_keys.CredentialTenant`), so the prefix is unambiguous. In open mode nothing is
qualified: every session is the default tenant's, as before there were tenants.
"""

from __future__ import annotations

from topics.messages import DEFAULT_TENANT

__all__ = ["SEPARATOR", "qualified_session_id", "session_tenant"]

SEPARATOR = ":"


def session_tenant(session_id: str) -> str:
    """The tenant a session id belongs to."""
    tenant, sep, _ = session_id.partition(SEPARATOR)
    return tenant if sep else DEFAULT_TENANT


def qualified_session_id(tenant: str, session_id: str) -> str:
    """The id under which `tenant`'s session `session_id` runs: itself if it is the tenant's already, else prefixed.

    The result may be longer than a session id may be (128); the caller validates it.
    """
    if session_tenant(session_id) == tenant:
        return session_id
    return f"{tenant}{SEPARATOR}{session_id}"
