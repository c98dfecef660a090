# -*- test-case-name: tests.test_gate -*-
"""Who is calling, as the HTTP policy layer established it: an `Identity` kept on the request
(`admit`); transports read it with `caller_of`, the policy layer with `identity_of`."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import attrs
from zope.interface import implementer

from mcpd.interfaces import IIdentity
from mcpd.security.addresses import normal_form
from mcpd.tools.api import DEFAULT_TENANT, Caller

if TYPE_CHECKING:
    from twisted.web.server import Request


@implementer(IIdentity)
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


# Where `admit` keeps the identity: a plain attribute, where a `setComponent` / `getComponent`
# pair costs a qualified-name lookup each (with every keyed request) and, for the keyless
# requests that carry none, an adaptation attempt.
_IDENTITY = "_mcpd_identity"


def identity_of(request: Request) -> Identity | None:
    """Who the policy layer admitted ``request`` as, if it was admitted with an identity."""
    return getattr(request, _IDENTITY, None)


def caller_of(request: Request, transport: str) -> Caller:
    """The `Caller` a transport hands the engine for ``request``."""
    identity: Identity | None = getattr(request, _IDENTITY, None)
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


def admit(request: Request, identity: Identity) -> None:
    """Keep on ``request`` who the policy layer admitted it as."""
    setattr(request, _IDENTITY, identity)
