"""``uadp new-plugin``: a pip-installable plugin package with a working component of one kind.

The package holds a pyproject (the ``uadp`` entry point), one module (the component, its
pydantic options and the hook that registers it), a README (install, use, test, publish) and a
test that runs the component through :mod:`uadp.testing`'s checks. Each kind's component is
small but real (a feature autoencoder, a square-paste synthesizer, a per-position aligner, a
random-weight backbone, a recall metric, a CSV dataset reader), so the package trains and
evaluates as it is, and a researcher replaces the method, not the plumbing.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

from ..errors import UadpError
from ..filesystem import new_folder_for_others


@dataclass(frozen=True)
class Kind:
    registry_kind: str  # `uadp list` kind
    section: str  # config section of `--set SECTION.OPTION=...`
    check: str  # the uadp.testing check its test runs
    summary: str  # what the generated component does (its help line)
    usage: str  # how a run uses it (README), with NAME for the component's name


_DATA = "uadp run --data PATH/TO/your-data"
KINDS = {
    "reconstructor": Kind(
        "reconstructors",
        "reconstructor",
        "check_reconstructor",
        "a 1x1 autoencoder of the backbone's features, scored by its reconstruction error",
        f"{_DATA} --reconstructor NAME --backbone timm   # EfficientNet-Lite0's stages 1-4",
    ),
    "synthesizer": Kind(
        "synthesizers",
        "synthesizer",
        "check_synthesizer",
        "pastes a flipped square from elsewhere in the image",
        f"{_DATA} --synthesizer NAME\nuadp synthesize --data PATH/TO/your-data --synthesizer NAME   # a grid of its samples",
    ),
    "aligner": Kind(
        "aligners",
        "aligner",
        "check_aligner",
        "standardises each pixel position by its mean and spread on normal images",
        f"{_DATA} --aligner NAME\nuadp run --from-run RUN_ID --aligner NAME   # on a finished run's model, without retraining",
    ),
    "backbone": Kind(
        "backbones",
        "backbone",
        "check_backbone",
        "two strided convolutions with fixed random weights",
        f"{_DATA} --backbone NAME",
    ),
    "metric": Kind(
        "metrics",
        "metric",
        "check_metric",
        "image recall at a false-alarm rate",
        f"{_DATA} --set 'eval.metrics=[image_auroc,pixel_ap,NAME]'",
    ),
    "dataset": Kind(
        "datasets",
        "dataset",
        "check_dataset",
        "images listed in a CSV file",
        "uadp run --set dataset.name=NAME --set dataset.root=PATH/TO/folder-with-index.csv",
    ),
}
NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")


def write_plugin(name: str, kind: str, out: str | Path | None = None, registry=None) -> Path:
    """Write the package for a ``kind`` component called ``name`` into ``out`` (default
    ``./uadp-NAME``) and return its folder. The folder appears whole or not at all."""
    if kind not in KINDS:
        raise UadpError(f"--kind {kind}: expected one of {', '.join(KINDS)}")
    if not NAME_PATTERN.fullmatch(name):
        raise UadpError(
            f"new-plugin {name!r}: a name is lower-case letters and digits, words joined by - or _ "
            "(it is what users type after --reconstructor and the like)"
        )
    spec = KINDS[kind]
    if registry is not None and name in registry.registered(spec.registry_kind):
        plugin = registry.get(spec.registry_kind, name).plugin
        raise UadpError(f"new-plugin {name}: a {kind} of that name is registered already (by {plugin}); choose another")
    dist = "uadp-" + name.replace("_", "-")
    out = Path(out) if out is not None else Path.cwd() / dist
    if out.exists() and any(out.iterdir()):
        raise UadpError(f"--out {out}: the folder exists and is not empty; choose another")
    module = "uadp_" + name.replace("-", "_")
    values = {
        "name": name,
        "kind": kind,
        "kinds": spec.registry_kind,
        "section": spec.section,
        "check": spec.check,
        "summary": spec.summary,
        "usage": spec.usage.replace("NAME", name),
        "module": module,
        "ident": module,
        "dist": dist,
        "dist_file": dist.replace("-", "_"),
        "Class": "".join(part.capitalize() for part in re.split(r"[-_]", name)),
    }
    files = {
        "pyproject.toml": "pyproject.toml.tmpl",
        "README.md": "README.md.tmpl",
        f"{module}.py": f"{kind}.py.tmpl",
        f"tests/test_{module}.py": "test_dataset.py.tmpl" if kind == "dataset" else "test_check.py.tmpl",
    }
    templates = resources.files(__package__) / "templates"
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = new_folder_for_others(out.parent, f".{out.name}-")  # renamed into place: mode as the umask says
    try:
        for target, template in files.items():
            text = Template((templates / template).read_text()).substitute(values)
            (staging / target).parent.mkdir(parents=True, exist_ok=True)
            (staging / target).write_text(text)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
