"""The docs keep up with the code: every hook, trait, contract type and command is documented.

Parametrized over what the code defines, so adding a hook, a registration trait, a contract
type or a CLI command without its documented entry fails here. Also: the README stays a short
guide, the docs site's navigation holds every page, and every benchmark table parses.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path

import pytest
import yaml

from helpers import load_benchmark
from uadp import contract, hookspecs
from uadp.cli import build_parser
from uadp.registry import TRAITS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PLUGINS_PAGE = (DOCS / "plugins.md").read_text()
CLI_PAGE = (DOCS / "cli.md").read_text()


def _sections(text: str, level: str) -> dict[str, str]:
    """Heading text -> the section's body, for headings of exactly ``level`` ('##', '###')."""
    parts = re.split(rf"^{level} (.+)$", text, flags=re.MULTILINE)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


HOOKS = sorted(name for name, fn in vars(hookspecs).items() if inspect.isfunction(fn) and name.startswith("register_"))
TRAIT_NAMES = sorted({trait for traits in TRAITS.values() for trait in traits})
CONTRACT_TYPES = sorted(
    name for name, obj in vars(contract).items() if inspect.isclass(obj) and obj.__module__ == contract.__name__
) + ["EvalView"]


def _commands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(action.choices)


def test_the_introspection_finds_something():
    """Guards the parametrizations below against silently iterating over nothing."""
    assert len(HOOKS) >= 8 and len(TRAIT_NAMES) >= 5 and len(CONTRACT_TYPES) >= 10 and len(_commands()) >= 8


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_heading_signature_and_example(hook):
    sections = _sections(PLUGINS_PAGE, "###")
    body = sections.get(f"`{hook}`")
    assert body is not None, f"docs/plugins.md has no '### `{hook}`' heading"
    parameters = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    assert f"def {hook}({parameters})" in body, f"docs/plugins.md: {hook} shows no signature 'def {hook}({parameters})'"
    assert body.count("@hookimpl") >= 2, f"docs/plugins.md: {hook} has no example beside its signature"


@pytest.mark.parametrize("trait", TRAIT_NAMES)
def test_every_registration_trait_is_documented(trait):
    sections = _sections(PLUGINS_PAGE, "###")
    body = sections.get(f"`{trait}`")
    assert body is not None, f"docs/plugins.md has no '### `{trait}`' heading"
    kinds = [kind for kind, traits in TRAITS.items() if trait in traits]
    assert any(kind.capitalize() in body for kind in kinds), f"docs/plugins.md: {trait} does not say it is for {kinds}"


@pytest.mark.parametrize("name", CONTRACT_TYPES)
def test_every_contract_type_is_documented(name):
    assert f"`{name}`" in _sections(PLUGINS_PAGE, "###"), f"docs/plugins.md has no '### `{name}`' heading"


@pytest.mark.parametrize("command", _commands())
def test_every_command_is_documented(command):
    sections = _sections(CLI_PAGE, "##")
    body = sections.get(f"`uadp {command}`")
    assert body is not None, f"docs/cli.md has no '## `uadp {command}`' heading"
    assert f"<!-- help: {command} -->" in body, f"docs/cli.md: uadp {command} does not include its --help"


def _nav_pages(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [page for value in node.values() for page in _nav_pages(value)]
    return [page for item in node for page in _nav_pages(item)]


def test_the_site_navigation_holds_every_page():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    in_nav = set(_nav_pages(config["nav"]))
    on_disk = {str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md")}
    assert in_nav - on_disk == set(), f"mkdocs.yml names pages that do not exist: {sorted(in_nav - on_disk)}"
    assert on_disk - in_nav == set(), f"pages missing from mkdocs.yml's nav: {sorted(on_disk - in_nav)}"


def test_every_benchmark_table_parses_and_every_marker_names_one():
    results_csv = load_benchmark("results_csv")
    files = sorted((ROOT / "benchmarks" / "results").glob("*.csv"))
    assert files, "benchmarks/results holds no table"
    for path in files:
        table = results_csv.read(path)  # raises on a missing title / command / hardware or a ragged row
        assert table.rows, f"{path.name}: no rows"
        assert all(command.strip() for command in table.commands), f"{path.name}: an empty command"
    for page in DOCS.rglob("*.md"):
        for name in re.findall(r"^<!-- results: (\S+) -->$", page.read_text(), flags=re.MULTILINE):
            assert name == "all" or (ROOT / "benchmarks" / "results" / name).is_file(), (
                f"{page}: no results file {name}"
            )


def test_results_files_round_trip(tmp_path):
    results_csv = load_benchmark("results_csv")
    table = results_csv.Results(
        "t", ["python x.py --a 1"], "a CPU, 2 threads", ["class", "v"], [["a", "0.5"], ["b|c", "1"]], ["n"]
    )
    assert results_csv.read(results_csv.write(tmp_path / "t.csv", table)) == table
    (tmp_path / "bad.csv").write_text("# title: t\n# hardware: h\nclass,v\na,1\n")
    with pytest.raises(ValueError, match="command"):
        results_csv.read(tmp_path / "bad.csv")


USER_TEXT = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
FORBIDDEN = {
    r"\bmachine [AB]\b": "machine letters (name the CPU instead)",
    r"/tmp/": "scratch paths",
    r"\.\./shared": "paths outside the repository",
    r"\bSPEC\b|DESIGN\.md|DESIGN §": "documents that are not in the repository",
    r"\bissue\b": "talk of issues (say what the tool does)",
    r"\[UNSPEC|\[CODE-HINT": "bracket tags no user can decode",
    r"\bconfigs/": "the old presets folder (presets are package data: `--config NAME`)",
}


@pytest.mark.parametrize("path", USER_TEXT, ids=lambda p: str(p.relative_to(ROOT)))
def test_user_text_has_no_internal_references(path):
    text = path.read_text()
    for pattern, what in FORBIDDEN.items():
        found = re.search(pattern, text)
        assert found is None, f"{path.relative_to(ROOT)} has {what}: {found.group(0)!r}"


def _project_urls() -> dict[str, str]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]


def test_readme_is_a_short_guide_whose_links_resolve():
    """Every link reaches a page: the README travels in the wheel without docs/, so it links to the
    documentation site (a page there is a file under docs/) and the source by address, never by path."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300, f"README.md has {len(text.splitlines())} lines; keep it at most 300"
    urls = _project_urls()
    site, source = urls["Documentation"], urls["Source"] + "/blob/main/"
    yaml_site = yaml.safe_load((ROOT / "mkdocs.yml").read_text().split("\ntheme:")[0])["site_url"]
    assert yaml_site == site
    targets = re.findall(r"\]\(([^)\s]+)\)|<(https?://[^>]+)>", text)
    targets = [a or b for a, b in targets]
    assert targets
    for target in targets:
        assert target.startswith("https://"), f"README.md links to {target} by path: a wheel has no such file"
        page = target.split("#")[0]
        if page.startswith(site):
            rel = page.removeprefix(site)
            candidates = (
                [DOCS / rel] if "." in Path(rel).name else [DOCS / f"{rel.rstrip('/')}.md", DOCS / rel / "index.md"]
            )
            assert any(c.is_file() for c in candidates), f"README.md links to {target}: no page under docs/"
        elif page.startswith(source):
            assert (ROOT / page.removeprefix(source)).exists(), f"README.md links to {target}: no such file"
        else:
            assert page in urls.values(), f"README.md links to {target}, neither the docs site nor the source"


def test_a_benchmark_command_writes_a_results_file_the_docs_can_render(tmp_path):
    import json
    import subprocess

    metrics = {"image_auroc": 0.9, "pixel_auroc": 0.8, "pixel_ap": 0.3, "pixel_dsc": 0.2}
    summary = {
        "per_class": {"a": metrics, "b": metrics},
        "mean": metrics,
        "pooled": metrics,
        "timing": {"train_s": 1.0},
    }
    (tmp_path / "run.json").write_text(json.dumps(summary))
    out = tmp_path / "compare.csv"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_compare.py"), "--summaries", str(tmp_path / "run.json"),
         "--results", str(out), "--title", "two classes"],
        check=True, capture_output=True, cwd=ROOT,
    )  # fmt: skip
    table = load_benchmark("results_csv").read(out)
    assert table.title == "two classes" and "bench_compare.py" in table.commands[0] and "threads" in table.hardware
    assert [row[0] for row in table.rows] == ["a", "b", "mean", "pooled"]
    assert table.header[1:3] == ["run I-AUROC", "run P-AUROC"] and table.rows[0][1] == "0.900"


# --------------------------------------------------------------------------- and the tests keep up too

OTHER_TESTS = {
    path.name: path.read_text() for path in (ROOT / "tests").glob("test_*.py") if path.name != "test_docs.py"
}


def _tests_naming(pattern: str) -> list[str]:
    return [name for name, text in OTHER_TESTS.items() if re.search(pattern, text)]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_implemented_in_a_test(hook):
    """A test plugin implements each hook (``def register_...``), so each is run, not only documented."""
    assert _tests_naming(rf"def {hook}\("), f"no test implements the hook {hook}"


@pytest.mark.parametrize("trait", TRAIT_NAMES)
def test_every_registration_trait_is_used_in_a_test(trait):
    assert _tests_naming(rf"\b{trait}="), f"no test registers a component with the trait {trait}="


@pytest.mark.parametrize("name", CONTRACT_TYPES)
def test_every_contract_type_is_used_in_a_test(name):
    assert _tests_naming(rf"\b{name}\b"), f"no test uses the contract type {name}"


@pytest.mark.parametrize("command", _commands())
def test_every_command_is_run_by_a_test(command):
    assert _tests_naming(rf"[\[\"( ]\"?{re.escape(command)}\"[,\]]"), f"no test runs `uadp {command}`"


def test_every_bundled_method_and_preset_is_in_the_guides():
    """The getting-started guide lists every preset and every method, and the deploying guide every
    method that exports (all of them): a method added without its lines fails here."""
    from uadp.registry import Registry

    registry = Registry()  # the installed plugins alone, not those other tests add
    started = (DOCS / "getting-started.md").read_text()
    preset_rows = set(re.findall(r"^\| `([\w-]+)` \|", started, flags=re.MULTILINE))
    bundled = {name for name, preset in registry.presets().items() if preset.plugin in BUNDLED_PLUGINS}
    assert bundled <= preset_rows, f"presets missing from the getting-started table: {sorted(bundled - preset_rows)}"
    where_next = _sections(started, "##")["Where next"]
    deploying = (DOCS / "deploying.md").read_text()
    exporting = deploying[deploying.index("Every bundled reconstructor") :].split(";")[0]
    for name in registry.names("reconstructors"):
        title = METHOD_TITLES[name]
        assert title in where_next, f"getting-started's 'Where next' does not name {title}"
        assert f"`{name}`" in exporting, f"deploying.md does not say that {name} exports"
        if name != registry.presets()[registry.default_preset()].plugin:  # the default's run is a plain `uadp run`
            assert f"--reconstructor {name}" in started, f"getting-started shows no run of {name}"


BUNDLED_PLUGINS = {"uniad", "unias", "revdist", "omnial", "patchcore", "ensemble"}
METHOD_TITLES = {
    "uniad": "UniAD",
    "unias": "UniAS",
    "omnial": "OmniAL",
    "revdist": "Reverse Distillation",
    "patchcore": "PatchCore",
    "ensemble": "Ensemble",
}
