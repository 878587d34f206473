"""Checks of a component on its own, before any run: what a synthesizer returns, what a
backbone's features look like against its spec, what a dataset reader lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import RunConfig
from .compare import describe


def check_synthesis(label: str, config: RunConfig, registry) -> None:
    """The synthesizer on its own, on a few training images at the run's size."""
    # loaded by the check that needs it: `import uadp.testing` stays free of torch and MLflow
    from ..contract import Synthesis
    from ..data.images import read_image
    from ..data.splits import gather
    from ..data.transforms import geometry
    from ..engine.components import build_dataset, build_synthesizer

    synthesizer, _ = build_synthesizer(config, registry)
    dataset, _ = build_dataset(config, registry)
    resize = geometry(config.data.size_hw)
    h, w = config.data.size_hw
    names = None
    for index, sample in enumerate(gather(dataset, config.data.classes).train[::3][:4]):
        image = resize(image=read_image(sample.path))["image"].astype(np.float32) / 255.0
        before = image.copy()
        out = synthesizer(image, np.random.default_rng([7, index]))
        where = f"{label} on {Path(sample.path).name}"
        if not np.array_equal(image, before):
            raise AssertionError(f"{where}: changed its input image in place (the core keeps it as the clean image)")
        if not isinstance(out, Synthesis):
            raise AssertionError(f"{where}: returned {type(out).__name__}, not a uadp.contract.Synthesis")
        if not isinstance(out.image, np.ndarray) or out.image.shape != (h, w, 3) or out.image.dtype != np.float32:
            raise AssertionError(f"{where}: image {describe(out.image)}; expected float32 {[h, w, 3]}")
        if not np.isfinite(out.image).all() or out.image.min() < 0 or out.image.max() > 1:
            raise AssertionError(
                f"{where}: image values in [{np.nanmin(out.image):.4g}, {np.nanmax(out.image):.4g}]; "
                "expected finite values in [0, 1]"
            )
        if "mask" not in out.targets:
            raise AssertionError(f"{where}: no 'mask' target (targets: {sorted(out.targets) or 'none'})")
        for target, value in out.targets.items():
            if (
                not isinstance(value, np.ndarray)
                or value.dtype != np.float32
                or value.shape[:2] != (h, w)
                or value.ndim not in (2, 3)
                or (target == "mask" and value.ndim != 2)
            ):
                raise AssertionError(
                    f"{where}: target {target!r} {describe(value)}; expected float32 {[h, w]}"
                    f"{'' if target == 'mask' else ' or [H,W,C]'}"
                )
            if not np.isfinite(value).all():
                raise AssertionError(f"{where}: target {target!r} has values that are not finite")
        if names is not None and sorted(out.targets) != names:
            raise AssertionError(
                f"{where}: targets {sorted(out.targets)}, another image's {names} "
                "(every image needs the same names: a batch stacks them)"
            )
        names = sorted(out.targets)
        again = synthesizer(image, np.random.default_rng([7, index]))
        if not (
            np.array_equal(again.image, out.image)
            and all(k in again.targets and np.array_equal(again.targets[k], v) for k, v in out.targets.items())
        ):
            raise AssertionError(
                f"{where}: the same generator seed gave another result (use only the rng it is "
                "given: runs must be reproducible whatever the number of workers)"
            )


def check_features(label: str, config: RunConfig, registry) -> None:
    """The backbone on its own: what ``forward`` returns is what ``spec`` declares."""
    # loaded by the check that needs it: `import uadp.testing` stays free of torch and MLflow
    import torch

    from ..contract import Backbone, FeatureSpec
    from ..engine.components import build_model

    backbone, _, _ = build_model(config, registry)
    if not isinstance(backbone, Backbone):
        raise AssertionError(f"{label}: built a {type(backbone).__name__}, not a uadp.contract.Backbone")
    spec = getattr(backbone, "spec", None)
    if not isinstance(spec, FeatureSpec) or len(spec.channels) != len(spec.strides) or not spec.channels:
        raise AssertionError(f"{label}: spec {spec!r}; expected a FeatureSpec with channels and strides per stage")
    h, w = config.data.size_hw
    images = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    backbone.eval()
    with torch.no_grad():
        features = backbone(images)
        again = backbone(images)
    if not isinstance(features, (list, tuple)) or len(features) != len(spec.channels):
        raise AssertionError(
            f"{label}: forward returned {type(features).__name__} of {len(features)} items; "
            f"spec declares {len(spec.channels)} stages"
        )
    for stage, (tensor, channels, stride) in enumerate(zip(features, spec.channels, spec.strides), 1):
        expected = {
            (2, channels, size_h, size_w)
            for size_h in (h // stride, -(-h // stride))
            for size_w in (w // stride, -(-w // stride))
        }
        if tuple(tensor.shape) not in expected:
            raise AssertionError(
                f"{label}: stage {stage} has shape {list(tensor.shape)} for a {h}×{w} image; spec "
                f"declares {channels} channels at stride {stride}, {list(sorted(expected)[0])}"
            )
        if not torch.isfinite(tensor).all():
            raise AssertionError(f"{label}: stage {stage} has values that are not finite")
    if not all(torch.equal(a, b) for a, b in zip(features, again)):
        raise AssertionError(
            f"{label}: two passes over the same images gave other features (frozen and deterministic?)"
        )


def check_samples(label: str, class_name: str, train: list, test: list) -> None:
    where = f"{label}, class {class_name!r}"
    if not train or not test:
        raise AssertionError(f"{where}: {len(train)} training and {len(test)} test samples; expected some of each")
    for sample in train:
        if sample.label != 0 or sample.mask_path is not None:
            raise AssertionError(f"{where}: training sample {sample.path} is not normal (label 0, no mask)")
    for sample in test:
        if sample.label not in (0, 1) or (sample.label == 1) != (sample.mask_path is not None):
            raise AssertionError(
                f"{where}: test sample {sample.path} has label {sample.label} and mask {sample.mask_path}; "
                "expected 0 without a mask or 1 with one"
            )
    for sample in (*train, *test):
        if not Path(sample.path).is_file():
            raise AssertionError(f"{where}: {sample.path} does not exist")
        if sample.mask_path is not None and not Path(sample.mask_path).exists():  # a file, or a folder of masks
            raise AssertionError(f"{where}: {sample.mask_path} does not exist")
