"""Tests of the embedded demo dataset (uadp_plugins.datasets._demo_builder, _demo_products, _demo_defects).

The dataset is what `uadp run` trains on when no dataset is given, so it must be a
valid MVTec AD tree, reproducible to the bit, cached safely, and its masks must be
exact: a mask that is off by a few pixels silently skews every pixel-level metric.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uadp_plugins.datasets import _demo_builder as db
from uadp_plugins.datasets import _demo_defects as defects
from uadp_plugins.datasets import _demo_products as products

EXPECTED_KINDS = {"scratch", "crack", "stain"}  # plus at least one of missing / pasted


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden marker included), keyed by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return db.build_demo(tmp_path_factory.mktemp("demo_a"))


def test_folder_name_and_marker(built: Path) -> None:
    assert built.name == f"demo-v{db.DEMO_VERSION}"
    info = json.loads((built / db.MARKER_NAME).read_text())
    assert info["version"] == db.DEMO_VERSION and info["seed"] == 0


def test_mvtec_layout_and_sizes(built: Path) -> None:
    classes = sorted(p.name for p in built.iterdir() if p.is_dir())
    assert classes == sorted(products.DEMO_CLASSES)
    assert len(classes) >= 4
    all_kinds: set[str] = set()
    for cls in classes:
        train = sorted((built / cls / "train" / "good").glob("*.png"))
        good = sorted((built / cls / "test" / "good").glob("*.png"))
        assert [p.name for p in train] == [f"{i:03d}.png" for i in range(24)]
        assert len(good) == 8
        kinds = sorted(p.name for p in (built / cls / "test").iterdir() if p.name != "good")
        assert len(kinds) >= 3
        assert sorted(p.name for p in (built / cls / "ground_truth").iterdir()) == kinds
        assert sum(len(list((built / cls / "test" / k).glob("*.png"))) for k in kinds) == 12
        all_kinds.update(kinds)
        for path in train[:3] + good[:2]:
            image = _load(path)
            assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    assert len(all_kinds) >= 4
    assert EXPECTED_KINDS <= all_kinds
    assert all_kinds & {"missing", "pasted"}


def test_every_defect_has_a_sane_mask(built: Path) -> None:
    for cls in products.DEMO_CLASSES:
        for kind_dir in (built / cls / "test").iterdir():
            if kind_dir.name == "good":
                continue
            for path in sorted(kind_dir.glob("*.png")):
                image = _load(path)
                mask_path = built / cls / "ground_truth" / kind_dir.name / f"{path.stem}_mask.png"
                with Image.open(mask_path) as mask_img:
                    assert mask_img.mode == "L"
                    mask = np.asarray(mask_img)
                assert mask.shape == image.shape[:2] == (256, 256)
                assert set(np.unique(mask).tolist()) == {0, 255}, mask_path
                area = (mask > 0).mean()
                assert 0.0 < area < 0.2, (mask_path, area)


def test_normal_images_vary_but_stay_close(built: Path) -> None:
    """Two shots of one product differ (position, exposure, noise) but are not wildly apart."""
    for cls in products.DEMO_CLASSES:
        a, b = (_load(built / cls / "train" / "good" / f"{i:03d}.png").astype(float) for i in (0, 1))
        assert np.abs(a - b).mean() > 1.0
        assert abs(a.mean() - b.mean()) < 25.0


def test_build_is_bit_identical(built: Path, tmp_path: Path) -> None:
    again = db.build_demo(tmp_path)
    first, second = _files(built), _files(again)
    assert first.keys() == second.keys()
    assert len(first) == 4 * (24 + 8 + 12 + 12) + 1
    assert [k for k in first if first[k] != second[k]] == []


def test_second_call_reuses_the_folder(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = {p: p.stat().st_mtime_ns for p in built.rglob("*")}

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the complete demo folder was rebuilt")

    monkeypatch.setattr(db, "_write_class", must_not_run)
    assert db.build_demo(built.parent) == built
    assert {p: p.stat().st_mtime_ns for p in built.rglob("*")} == before


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrink the build (two classes, few images) for tests about caching mechanics."""
    monkeypatch.setattr(db, "CLASS_SPECS", products.CLASS_SPECS[:2])
    monkeypatch.setattr(db, "N_TRAIN", 3)
    monkeypatch.setattr(db, "N_TEST_GOOD", 2)
    monkeypatch.setattr(db, "N_TEST_DEFECT", 4)


def test_interrupted_build_leaves_nothing_complete(tiny: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = db._write_png
    calls = {"n": 0}

    def flaky_write(path: Path, array: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("simulated interrupt")
        real_write(path, array)

    root = tmp_path / "cache"
    monkeypatch.setattr(db, "_write_png", flaky_write)
    with pytest.raises(KeyboardInterrupt):
        db.build_demo(root)
    final = root / f"demo-v{db.DEMO_VERSION}"
    assert not (final / db.MARKER_NAME).exists()
    assert not final.exists()
    assert list(root.iterdir()) == []  # the temp folder was cleaned up too

    monkeypatch.setattr(db, "_write_png", real_write)
    rebuilt = db.build_demo(root)
    assert rebuilt == final and (final / db.MARKER_NAME).is_file()
    reference = db.build_demo(tmp_path / "reference")
    assert _files(rebuilt) == _files(reference)


def test_hard_killed_build_is_not_mistaken_for_complete(tiny: None, tmp_path: Path) -> None:
    """A build killed without cleanup leaves only a hidden temp folder, never the final one."""
    leftover = tmp_path / f".demo-v{db.DEMO_VERSION}.tmp-dead"
    (leftover / "brick" / "train" / "good").mkdir(parents=True)
    final = db.build_demo(tmp_path)
    assert final == tmp_path / f"demo-v{db.DEMO_VERSION}" and (final / db.MARKER_NAME).is_file()
    assert sorted((final / "brick" / "train" / "good").iterdir())  # built properly, not the leftover


def test_incomplete_folder_without_marker_is_replaced(tiny: None, tmp_path: Path) -> None:
    final = tmp_path / f"demo-v{db.DEMO_VERSION}"
    (final / "brick" / "train" / "good").mkdir(parents=True)
    (final / "brick" / "train" / "good" / "000.png").write_bytes(b"half-written")
    assert db.build_demo(tmp_path) == final
    assert (final / db.MARKER_NAME).is_file()
    assert _load(final / "brick" / "train" / "good" / "000.png").shape == (256, 256, 3)


def test_other_seed_gets_its_own_folder_and_differs(built: Path, tiny: None, tmp_path: Path) -> None:
    other = db.build_demo(tmp_path, seed=7)
    assert other.name == f"demo-v{db.DEMO_VERSION}-seed7"
    name = "brick/train/good/000.png"
    assert (other / name).read_bytes() != (built / name).read_bytes()


def test_global_numpy_rng_is_untouched() -> None:
    state = np.random.get_state()[1].copy()
    image = products.make_normal_image("coins", np.random.default_rng(3))
    defects.apply_defect("stain", image, np.random.default_rng(4))
    assert np.array_equal(np.random.get_state()[1], state)


def _cases() -> list[tuple[str, str]]:
    """Every (class, defect) pair the dataset uses, plus every kind on every class."""
    pairs = {(cls, kind) for cls, kinds in products.DEMO_DEFECTS.items() for kind in kinds}
    pairs |= {(products.DEMO_CLASSES[0], kind) for kind in defects.DEFECT_KINDS}
    return sorted(pairs)


@pytest.mark.parametrize(("cls", "kind"), _cases())
def test_defect_changes_exactly_the_masked_pixels(cls: str, kind: str) -> None:
    for seed in range(4):
        rng = np.random.default_rng([seed, 11])
        clean = products.make_normal_image(cls, rng)
        before = clean.copy()
        donor = products.make_normal_image(cls, np.random.default_rng([seed, 12])) if kind == "pasted" else None
        defective, mask = defects.apply_defect(kind, clean, rng, donor=donor, style=products.class_style(cls))
        assert np.array_equal(clean, before), "apply_defect must not modify its input"
        assert defective.shape == clean.shape and defective.dtype == np.uint8
        assert mask.shape == clean.shape[:2] and mask.dtype == bool
        assert 0.001 < mask.mean() < 0.1
        # Outside the mask: bit-identical to the defect-free image.
        assert np.array_equal(defective[~mask], clean[~mask])
        # Inside: a clearly visible change, touching (nearly) every masked pixel.
        diff = np.abs(defective.astype(np.int16) - clean.astype(np.int16))
        assert diff[mask].mean() >= 10.0, (cls, kind, seed, diff[mask].mean())
        assert np.any(diff > 0, axis=2)[mask].mean() > 0.9


@pytest.mark.parametrize("kind", defects.DEFECT_KINDS)
def test_apply_defect_is_deterministic(kind: str) -> None:
    image = products.make_normal_image("gravel", np.random.default_rng(5))
    a = defects.apply_defect(kind, image, np.random.default_rng(9))
    b = defects.apply_defect(kind, image, np.random.default_rng(9))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_unknown_defect_kind_is_rejected() -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError):
        defects.apply_defect("smudge", image, np.random.default_rng(0))
