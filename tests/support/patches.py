"""A library as shipped during a test of the patches to it (bridge.patching)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from bridge.patching import Patch


@contextmanager
def as_shipped(patches: Iterable[Patch], originals: Mapping[str, Any]) -> Iterator[None]:
    """Each attribute of ``patches`` as the library shipped it (``originals``) inside, and
    whatever was in place before (installed patches) afterwards."""
    patches = tuple(patches)
    saved = {p.name: getattr(p.owner, p.attribute) for p in patches}
    for patch in patches:
        setattr(patch.owner, patch.attribute, originals[patch.name])
    try:
        yield
    finally:
        for patch in patches:
            setattr(patch.owner, patch.attribute, saved[patch.name])
