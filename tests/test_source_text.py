"""The text users read in the code speaks for itself.

Docstrings, option help, comments and preset YAML may cite the papers by name, but not the
project's private design notes (which are not shipped), and not shorthand tags in brackets
such as ``[UNSPEC]`` that nobody outside the project can decode. ``uadp show NAME`` prints
option help straight from the code, so its output is checked too.
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest

from helpers import call_captured
from uadp.registry import KINDS, get_registry

ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOTS = (ROOT / "platform", ROOT / "plugins")

# references to documents that live outside the repository
PRIVATE_REFERENCE = re.compile(r"\bSPEC\b|SPEC\.md|DESIGN §|DESIGN\.md|\.\./shared")
# a bracketed all-caps tag: [UNSPEC], [CODE-HINT], [UNSPEC default], [INCONSISTENCY], ...
TAG = re.compile(r"\[[A-Z][A-Z0-9_-]{2,}(?:\s[^\]\n]*)?\]")
# lower-case tags that were used the same way
LOWER_TAGS = ("[paper]", "[uadp,")

# tokens of a Python file that hold prose: comments and string literals (docstrings, help)
PROSE_TOKENS = {tokenize.COMMENT, tokenize.STRING} | (
    {tokenize.FSTRING_MIDDLE} if hasattr(tokenize, "FSTRING_MIDDLE") else set()
)


def _source_files() -> list[Path]:
    files = []
    for root in SOURCE_ROOTS:
        for pattern in ("*.py", "*.yaml", "*.yml"):
            files += [p for p in root.rglob(pattern) if "__pycache__" not in p.parts and ".egg-info" not in str(p)]
    return sorted(files)


def _prose(path: Path) -> list[tuple[int, str]]:
    """(line, text) of the parts of a file a reader sees as words."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".py":
        return list(enumerate(text.splitlines(), start=1))
    return [
        (token.start[0], token.string)
        for token in tokenize.generate_tokens(io.StringIO(text).readline)
        if token.type in PROSE_TOKENS
    ]


def _problems(text: str) -> list[str]:
    found = [m.group(0) for m in PRIVATE_REFERENCE.finditer(text)]
    found += [m.group(0) for m in TAG.finditer(text)]
    found += [tag for tag in LOWER_TAGS if tag in text]
    return found


def test_the_scan_sees_what_it_should() -> None:
    for bad in (
        "see SPEC §3.4",
        "SPEC.md",
        "DESIGN §2",
        "../shared/DESIGN.md",
        "heads [UNSPEC]",
        "[CODE-HINT] 4",
        "[UNSPEC default]",
        "[INCONSISTENCY]",
        "itself [paper]",
        "[uadp, not in the paper]",
    ):
        assert _problems(bad), bad
    for fine in ("_CLASS_SPECS", "maps [B,H,W]", "[I_r, A]", "[0, 1]", "[short=I-AP]", "[inputs=features]"):
        assert not _problems(fine), fine


@pytest.mark.parametrize("path", _source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_source_text_has_no_private_references_or_tags(path: Path) -> None:
    bad = [f"line {line}: {hit!r}" for line, text in _prose(path) for hit in _problems(text)]
    assert not bad, f"{path.relative_to(ROOT)}: " + "; ".join(bad)


def _component_names() -> list[str]:
    registry = get_registry()
    return sorted({name for kind in KINDS for name in registry.names(kind)})


def test_every_component_is_checked() -> None:
    names = _component_names()
    for name in ("uniad", "unias", "omnial", "revdist", "panel-jnd", "cada", "timm", "demo", "pixel_dsc"):
        assert name in names


@pytest.mark.parametrize("name", _component_names())
def test_uadp_show_prints_no_tags(name: str) -> None:
    code, out, err = call_captured(["show", name])
    assert code == 0, err
    assert not _problems(out), f"uadp show {name}: {_problems(out)}"


def test_uadp_list_prints_no_tags() -> None:
    code, out, err = call_captured(["list"])
    assert code == 0, err
    assert not _problems(out), _problems(out)
