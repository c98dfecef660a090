# -*- test-case-name: tests.test_legacy_sse,tests.test_transports -*-
"""HTTPS listeners: Twisted's ``ssl:`` endpoint strings, checked at start-up, and a log line for
each client whose TLS handshake fails.

``--listen ssl:8443:privateKey=key.pem:certKey=cert.pem`` takes every option of Twisted's ssl
endpoint (``extraCertChain=chain.pem`` for intermediate certificates, ``dhParameters=…``,
``interface=…``); the same Site serves it as any TCP listener.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL, crypto
from twisted.internet import endpoints
from twisted.internet.error import VerifyError
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from mcpd.config import ConfigError

log = Logger(namespace="mcpd.tls")


class EndpointError(ConfigError):
    """An endpoint string that cannot be served; the message says why in one line."""


def is_tls(description: str) -> bool:
    """Whether ``description`` is a TLS server endpoint string."""
    return description.split(":", 1)[0].strip().lower() == "ssl"


def check_endpoint(reactor: Any, description: str) -> Any:
    """Parse ``description`` into a server endpoint; for TLS, read the certificate, key and chain
    and build the TLS context now, so a missing, unreadable or mismatched file stops start-up."""
    try:
        endpoint = endpoints.serverFromString(reactor, description)
    except OSError as e:
        raise EndpointError(f"cannot read {e.filename or 'a file it names'}: {e.strerror or e}") from None
    except (crypto.Error, SSL.Error) as e:
        raise EndpointError(f"not a usable PEM certificate or private key ({_openssl_reason(e)})") from None
    except VerifyError as e:
        raise EndpointError(f"the private key does not belong to the certificate ({e})") from None
    except (ValueError, TypeError, KeyError) as e:
        raise EndpointError(f"not a usable endpoint ({e})") from None
    context_factory = getattr(endpoint, "_sslContextFactory", None)
    if context_factory is not None:
        try:
            context_factory.getContext()
        except (crypto.Error, SSL.Error) as e:
            raise EndpointError(
                f"the private key and certificate do not make a TLS context ({_openssl_reason(e)})"
            ) from None
    return endpoint


def _openssl_reason(error: Exception) -> str:
    """The last reason string of an OpenSSL error stack, or the error itself."""
    stack = error.args[0] if error.args else None
    if isinstance(stack, list) and stack and isinstance(stack[-1], tuple):
        return str(stack[-1][-1])
    return str(error) or type(error).__name__


class _HandshakeWatch(ProtocolWrapper):
    """Logs a connection that ends in a TLS error before any request arrived."""

    _spoke = False

    def dataReceived(self, data: bytes) -> None:
        self._spoke = True
        super().dataReceived(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if not self._spoke and reason.check(SSL.Error):
            peer = self.transport.getPeer() if self.transport is not None else None
            log.info(
                "TLS handshake with {peer} failed: {why}",
                peer=getattr(peer, "host", peer),
                why=_openssl_reason(reason.value),
            )
        super().connectionLost(reason)


@implementer(IProtocolNegotiationFactory)
class TLSHandshakeLog(WrappingFactory):
    """Wraps the Site of an ``ssl:`` listener to log failed handshakes (once each).

    Under TLS the wrapper must forward ALPN (``acceptableProtocols``) to the Site, or clients
    that offer ``h2``/``http/1.1`` fail the handshake.
    """

    protocol = _HandshakeWatch
    noisy = False

    def acceptableProtocols(self) -> list[bytes]:
        wrapped = IProtocolNegotiationFactory(self.wrappedFactory, None)
        return wrapped.acceptableProtocols() if wrapped is not None else [b"http/1.1"]
