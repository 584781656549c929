"""The TLS context for webhook endpoints: certifi's bundle or an operator's CA bundle, with what
an endpoint may make the worker compute bounded.

An endpoint chooses the key exchange among what the client offers, and OpenSSL's defaults offer
finite-field Diffie-Hellman: a TLS 1.2 server with a 10,000-bit group of its own making cost the
worker 0.65 s of CPU per handshake, a TLS 1.3 server asking (HelloRetryRequest) for ffdhe8192
0.1 s, and renegotiations repeat a handshake within one connection (2026-12-06). The context
offers elliptic-curve key exchange only (:data:`CIPHERS`, :data:`GROUPS`) and refuses
renegotiation; endpoints that support neither ECDHE nor TLS 1.3 (none of the common servers'
defaults) fail with ``tls_error``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import ssl
from typing import Any

import httpx

from bridge.errors import ConfigError

__all__ = ["CIPHERS", "GROUPS", "harden", "ssl_context"]

log = logging.getLogger(__name__)

#: TLS 1.2 cipher suites offered: ECDHE key exchange with AEAD ciphers (TLS 1.3's are OpenSSL's).
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
#: Key exchange groups offered, TLS 1.3 and ECDHE alike: elliptic curves only.
GROUPS = "X25519:P-256:P-384"

#: ``SSL_CTRL_SET_GROUPS_LIST`` of ``<openssl/ssl.h>`` (``SSL_CTX_set1_groups_list`` is a macro
#: over ``SSL_CTX_ctrl``); Python's :mod:`ssl` has no call for it.
_SSL_CTRL_SET_GROUPS_LIST = 92


def ssl_context(verify: ssl.SSLContext | str | bool) -> ssl.SSLContext:
    """The TLS context for endpoints: certifi's bundle (``True``), or a CA bundle file or
    directory (:class:`ConfigError` when it cannot be loaded); :func:`harden` ed unless
    ``verify`` is a context of the caller's."""
    if isinstance(verify, ssl.SSLContext):
        return verify
    if not isinstance(verify, str):
        return harden(httpx.create_ssl_context(verify=verify, trust_env=False))
    try:
        if os.path.isdir(verify):
            return harden(ssl.create_default_context(capath=verify))
        return harden(ssl.create_default_context(cafile=verify))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load CA certificates from {verify!r}: {exc}") from None


def harden(context: ssl.SSLContext) -> ssl.SSLContext:
    """``context`` with renegotiation refused and elliptic-curve key exchange only."""
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_ciphers(CIPHERS)
    try:
        _set_groups(context, GROUPS)
    except (OSError, AttributeError, RuntimeError) as exc:
        # A Python whose ssl module is not the one this was written against: the groups
        # stay OpenSSL's (finite-field ones included), said once at start.
        log.warning("TLS key exchange groups not limited to %s: %s", GROUPS, exc)
    return context


def _set_groups(context: ssl.SSLContext, groups: str) -> None:
    """``SSL_CTX_set1_groups_list`` on ``context``'s ``SSL_CTX``, reached through CPython's
    ``PySSLContext`` (whose first field, after the object header, is the ``SSL_CTX *``), and
    checked to be it (its options read through OpenSSL are the context's) before any call
    changes it."""
    import _ssl

    library: Any = ctypes.CDLL(_ssl.__file__)  # libssl's symbols, through _ssl's own link
    get_options = library.SSL_CTX_get_options
    get_options.restype = ctypes.c_uint64
    get_options.argtypes = [ctypes.c_void_p]
    control = library.SSL_CTX_ctrl
    control.restype = ctypes.c_long
    control.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
    header = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)
    pointer = ctypes.c_void_p.from_address(id(context) + header).value
    if not pointer or get_options(pointer) != int(context.options):
        raise RuntimeError("the SSL_CTX of an ssl.SSLContext was not found where expected")
    if control(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode("ascii")) != 1:
        raise RuntimeError(f"OpenSSL refused the groups {groups!r}")
