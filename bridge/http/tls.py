"""The TLS context for webhook endpoints: certifi's bundle or an operator's CA bundle."""

from __future__ import annotations

import os
import ssl

import httpx

from bridge.errors import ConfigError

__all__ = ["ssl_context"]


def ssl_context(verify: ssl.SSLContext | str | bool) -> ssl.SSLContext:
    """The TLS context for endpoints: certifi's bundle (``True``), or a CA bundle file or
    directory (:class:`ConfigError` when it cannot be loaded)."""
    if not isinstance(verify, str):
        return httpx.create_ssl_context(verify=verify, trust_env=False)
    try:
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load CA certificates from {verify!r}: {exc}") from None
