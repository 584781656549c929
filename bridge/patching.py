"""Replacing a dependency's internals only where each is the code its patch was written against.

A patch names the attribute it replaces (or only relies on), the fingerprint of the original as
the library shipped it and the upstream behaviour it changes. :func:`apply` checks every
original of a set before it replaces any, and :func:`require_release` the library's version:
a release or an original the patches were not written against raises :class:`PatchMismatch`,
and the process refuses to start rather than run a patch over code it does not know.
:mod:`bridge.worker.faust_patches` (faust-streaming, aiokafka's connections) and
:mod:`bridge.kafka.aiokafka_patches` (aiokafka's record reader) hold the patches.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.metadata
import inspect
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bridge.errors import ConfigError

__all__ = ["PatchMismatch", "Patch", "fingerprint", "require_release", "apply"]


class PatchMismatch(ConfigError):
    """A library is not the release, or a function a patch replaces or relies on is not the
    code, that the patch was written against: the process refuses to start."""


@dataclass(frozen=True)
class Patch:
    """One replacement of (or reliance on) a library's internal."""

    #: Short name, used in messages.
    name: str
    #: The class or module holding the attribute.
    owner: Any
    attribute: str
    #: What is put in its place; ``None`` for an internal that is only relied on (checked,
    #: not replaced).
    replacement: Any
    #: SHA-256 (first 16 hex digits) of the original's source, as the library ships it; or
    #: several, one per form the library ships it in (a compiled class and its pure-Python
    #: twin, which the library uses when its extensions are not built).
    fingerprint: str | tuple[str, ...]
    #: The upstream behaviour the patch changes, in one line.
    upstream: str


def fingerprint(original: Any) -> str:
    """The first 16 hex digits of the SHA-256 of ``original``'s source (of the function a
    ``mode`` service task wraps; for a module, of its name; for a compiled class, which has no
    source, of its qualified name: the release check stands for its code)."""
    if inspect.ismodule(original):
        text = f"module {original.__name__}"
    else:
        target = getattr(original, "fun", original)
        if _compiled(target):
            text = f"compiled {target.__module__}.{target.__qualname__}"
        else:
            text = inspect.getsource(target)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _compiled(target: Any) -> bool:
    """Whether ``target`` comes from an extension module (a Cython class, say)."""
    module = sys.modules.get(getattr(target, "__module__", None) or "")
    path = str(getattr(module, "__file__", None) or "")
    return path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def require_release(distribution: str, written_against: str, patches: str) -> None:
    """:class:`PatchMismatch` unless ``distribution`` is installed at ``written_against``, the
    release ``patches`` (a module's name, for the message) were written against."""
    installed = importlib.metadata.version(distribution)
    if installed != written_against:
        raise PatchMismatch(
            f"{distribution} {installed} is installed; {patches} was written against "
            f"{written_against}: check every patch against the new release"
        )


def apply(patches: Iterable[Patch], originals: Mapping[str, Any], kind: str) -> None:
    """Put each replacement of ``patches`` in place, once, after checking every original.

    ``originals`` holds each patch's original as the library shipped it (read with
    ``getattr(..., None)`` when its module was imported: ``None`` for one it lacks).
    Idempotent (a patch already applied is skipped). Raises :class:`PatchMismatch` naming the
    patch (as ``"<kind> <name>:"``) when an original is missing, its fingerprint differs or
    another library wraps it; nothing is patched then.
    """
    pending: list[Patch] = []
    for patch in patches:
        where = getattr(patch.owner, "__qualname__", getattr(patch.owner, "__name__", "?"))
        current = getattr(patch.owner, patch.attribute, None)
        if current is None or originals[patch.name] is None:
            # Missing now, or when the patch modules kept the original they call.
            raise PatchMismatch(
                f"{kind} {patch.name}: {where} has no {patch.attribute}, which the patch "
                f"replaces or relies on; upstream behaviour it changes: {patch.upstream}"
            )
        if patch.replacement is not None and current is patch.replacement:
            continue
        wrapper = getattr(current, "fun", current)
        if hasattr(wrapper, "__wrapped__"):
            # inspect.getsource reads the wrapped function's source: a wrapper (another
            # library's instrumentation) had the original's fingerprint, whatever it did, and
            # was replaced or run beneath unseen (until 2026-12-07).
            raise PatchMismatch(
                f"{kind} {patch.name}: {where}.{patch.attribute} is wrapped by "
                f"{getattr(wrapper, '__module__', '?')}, not the code the patch was written "
                f"against; upstream behaviour it changes: {patch.upstream}"
            )
        found = fingerprint(current)
        expected = (patch.fingerprint,) if isinstance(patch.fingerprint, str) else patch.fingerprint
        if found not in expected:
            raise PatchMismatch(
                f"{kind} {patch.name}: {where}.{patch.attribute} is not the code the "
                f"patch was written against (fingerprint {found}, expected "
                f"{' or '.join(expected)}); upstream behaviour it changes: {patch.upstream}"
            )
        if patch.replacement is not None:
            pending.append(patch)
    for patch in pending:
        setattr(patch.owner, patch.attribute, patch.replacement)
