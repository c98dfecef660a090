# -*- test-case-name: tests.test_gate -*-
"""Who is calling, as the HTTP policy layer established it; transports read it from here."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import attrs

from mcpd.tools.api import DEFAULT_TENANT, Caller
from mcpd.web.network import normal_form

if TYPE_CHECKING:
    from twisted.web.server import Request

# The attribute of a twisted.web request the policy layer sets once it has admitted the request.
IDENTITY_ATTRIBUTE = "mcpd_identity"


@attrs.frozen
class Identity:
    """An admitted HTTP client: its key's name, scopes and tenant (none and ``default`` without
    keys), its real address (the client behind a trusted proxy, not the proxy), and the account
    its limits are counted against (``key:NAME``, or ``ip:ADDRESS`` without keys)."""

    name: str
    scopes: frozenset[str]
    peer: str
    account: str
    tenant: str = DEFAULT_TENANT


def caller_of(request: Request, transport: str) -> Caller:
    """The `Caller` a transport hands the engine for ``request``."""
    identity: Identity | None = getattr(request, IDENTITY_ATTRIBUTE, None)
    if identity is None:
        address = request.getClientAddress()
        peer = getattr(address, "host", "") or str(address)
        return Caller(
            peer=peer,
            transport=transport,
            account=_address_account(peer),
            x_request_id=getattr(request, "x_request_id", None),
        )
    return Caller(
        name=identity.name,
        scopes=identity.scopes,
        peer=identity.peer,
        transport=transport,
        account=identity.account,
        x_request_id=getattr(request, "x_request_id", None),
        tenant=identity.tenant,
    )


@functools.lru_cache(maxsize=4096)
def _address_account(peer: str) -> str:
    """The account of a client without keys: its address, IPv4-mapped IPv6 as IPv4."""
    return f"ip:{normal_form(peer)}"
