"""A generated MVTec-layout dataset and a config that trains on it in seconds.

The generated classes are procedural textures (stripes, checkerboard, dots, blobs) with random
phase and contrast; anomalies are patches of another class's texture, with exact masks.
They are easy enough that a working method separates them within seconds, and hard enough
that a broken one (random maps, inverted scores) does not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..config import RunConfig, build_config

CLASSES = ("stripes", "checker", "dots", "blobs")


def _texture(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A float [H,W,3] image in [0,1] of one texture class, with per-image variation."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    phase = rng.uniform(0, 2 * np.pi)
    if kind == "stripes":
        base = 0.5 + 0.35 * np.sin(2 * np.pi * 6 * yy + phase)
        colour = np.array([0.9, 0.6, 0.3])
    elif kind == "checker":
        shift = rng.integers(0, 8)
        cells = ((np.arange(size)[:, None] + shift) // 8 + (np.arange(size)[None, :] + shift) // 8) % 2
        base = 0.25 + 0.5 * cells.astype(np.float32)
        colour = np.array([0.5, 0.8, 0.9])
    elif kind == "dots":
        base = 0.3 + 0.5 * ((np.sin(2 * np.pi * 5 * xx + phase) * np.sin(2 * np.pi * 5 * yy + phase)) > 0.5)
        colour = np.array([0.7, 0.9, 0.5])
    elif kind == "blobs":
        from scipy.ndimage import gaussian_filter

        noise = gaussian_filter(rng.normal(size=(size, size)), sigma=size / 16)
        base = 0.5 + 0.4 * noise / (np.abs(noise).max() + 1e-8)
        colour = np.array([0.8, 0.5, 0.8])
    else:
        raise ValueError(f"unknown texture {kind!r}")
    contrast = rng.uniform(0.9, 1.1)
    image = np.clip((base[..., None] - 0.5) * contrast + 0.5, 0, 1) * colour
    image += rng.normal(0, 0.01, image.shape)
    return np.clip(image, 0, 1)


def _anomaly(
    image: np.ndarray, foreign: np.ndarray, rng: np.random.Generator, radius: tuple[float, float] = (0.1, 0.2)
) -> tuple[np.ndarray, np.ndarray]:
    """Blend in an elliptic patch of another class's pattern; return the image and its mask.

    The foreign pattern is recoloured to this image's mean colour and feathered in, so neither
    colour nor a sharp edge gives it away: only a model that learned which pattern belongs to
    the image finds it, while an untrained reconstructor stays far from a perfect score.
    """
    # loaded by the check that needs it: `import uadp.testing` stays free of torch and MLflow
    from scipy.ndimage import gaussian_filter

    size = image.shape[0]
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.integers(size // 5, size - size // 5, size=2)
    ry, rx = rng.integers(max(1, int(size * radius[0])), max(2, int(size * radius[1])), size=2)
    inside = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.float32)
    alpha = gaussian_filter(inside, sigma=2.0)[..., None]
    pattern = foreign.mean(axis=2, keepdims=True)
    recoloured = pattern / (pattern.mean() + 1e-8) * image.mean(axis=(0, 1))
    out = image * (1 - alpha) + np.clip(recoloured, 0, 1) * alpha
    return out, alpha[..., 0] >= 0.5


def _save(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(path)


def make_mvtec_dataset(
    root: str | Path,
    classes: tuple[str, ...] = CLASSES,
    n_train: int = 16,
    n_good: int = 4,
    n_bad: int = 6,
    size: int = 96,
    seed: int = 0,
    defect_radius: tuple[float, float] = (0.1, 0.2),
) -> Path:
    """Write a small MVTec-layout dataset with ``classes`` and return its root.

    ``defect_radius`` bounds the radii of the elliptic defects, as fractions of the image size
    (small ones test localisation finer than a coarse token grid).
    """
    root = Path(root)
    for class_index, kind in enumerate(classes):
        rng = np.random.default_rng([seed, class_index])
        folder = root / kind
        for i in range(n_train):
            _save(folder / "train" / "good" / f"{i:03d}.png", _texture(kind, size, rng))
        for i in range(n_good):
            _save(folder / "test" / "good" / f"{i:03d}.png", _texture(kind, size, rng))
        others = [c for c in CLASSES if c != kind]
        for i in range(n_bad):
            foreign = _texture(others[i % len(others)], size, rng)
            image, mask = _anomaly(_texture(kind, size, rng), foreign, rng, defect_radius)
            _save(folder / "test" / "patch" / f"{i:03d}.png", image)
            _save(folder / "ground_truth" / "patch" / f"{i:03d}_mask.png", mask.astype(np.float32))
    return root


def quick_config(data_root: str | Path, runs_root: str | Path, **sections: Any) -> RunConfig:
    """A config that trains in seconds on a :func:`make_mvtec_dataset` folder.

    UniAD's CPU preset made small: small image (128 px: an 8×8 token grid), a narrow UniAD, few epochs, no worker processes.
    Keyword arguments override whole sections, e.g. ``reconstructor={"name": "mynet"}``.
    """
    overrides: dict[str, Any] = {
        "dataset": {"name": "mvtec", "root": str(data_root)},
        "data": {"image_size": 128, "workers": 0},
        # stages 1-4, not the CPU preset's 1-5: with the stride-32 stage even an untrained
        # UniAD separates these generated patterns, which would hide whether training works
        "backbone": {"name": "timm", "model": "tf_efficientnet_lite0", "stages": [1, 2, 3, 4]},
        "reconstructor": {
            "name": "uniad",
            "hidden_dim": 64,
            "num_encoder_layers": 1,
            "num_decoder_layers": 1,
            "num_heads": 4,
            "ffn_dim": 128,
            "neighbor_size": 3,
        },
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "warmup_epochs": 0},
        "eval": {"overlays_per_class": 1},
        "tracking": {"root": str(runs_root)},
    }
    overrides.update(sections)
    return build_config(preset="uniad-cpu", overrides=overrides)


def make_check_dataset(root: str | Path, size: int = 64, seed: int = 0) -> Path:
    """The small dataset the checks use by default: two classes of :func:`make_mvtec_dataset`
    with 6 training images (one kept apart for thresholds), 2 good and 2 anomalous test images."""
    return make_mvtec_dataset(root, classes=CLASSES[:2], n_train=6, n_good=2, n_bad=2, size=size, seed=seed)
