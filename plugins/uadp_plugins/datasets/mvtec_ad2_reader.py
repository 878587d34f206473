"""The reader of an MVTec AD 2 folder that ``mvtec_ad2.py`` registers: classes, the training,
validation and public test images, and the mask of every anomalous test image.

The layout, as MVTec's own dataset class (``mvtec_ad_2_public_offline.py``, shipped with the
data) and anomalib's ``MVTecAD2Dataset`` read it: ``train/good`` and ``validation/good`` hold
normal images; ``test_public/good`` and ``test_public/bad`` the public test images, the mask of
``bad/<stem>.png`` being ``test_public/ground_truth/bad/<stem>_mask.png`` (255 anomalous, 0
normal); ``test_private/`` and ``test_private_mixed/`` hold their images directly, without
ground truth. Every image is a PNG.
"""

from __future__ import annotations

from pathlib import Path

from uadp.plugin import DataError, Sample, SubmissionFile
from uadp_plugins.datasets._class_folders import checked_root, class_names, images, normal_samples
from uadp_plugins.datasets.mvtec_ad2 import MVTecAD2Config

DATASET = "MVTec AD 2"
LAYOUT = "<root>/<class>/train/good/*.png, <root>/<class>/validation/good/*.png and <root>/<class>/test_public/"
MASK_SUFFIX = "_mask"
PRIVATE = ("test_private", "test_private_mixed")  # no ground truth: scored by MVTec's server


class MVTecAD2Folder:
    """Reads one MVTec AD 2 folder."""

    def __init__(self, config: MVTecAD2Config) -> None:
        self.root = checked_root(config.root)
        self.name = self.root.resolve().name

    def submission_files(self, class_name: str) -> list[SubmissionFile]:
        """The private test images of ``class_name`` and their answers' places, as MVTec's
        evaluation server reads them: ``anomaly_images/<class>/<set>/<stem>.tiff`` (the map) and
        ``anomaly_images_thresholded/<class>/<set>/<stem>.png`` (the binary mask)."""
        files = []
        for folder in PRIVATE:
            found = images(self.root / class_name / folder)
            if not found:
                raise DataError(
                    f"class {class_name!r} has no {folder} images; expected {self.root / class_name / folder}/*.png"
                )
            for path in found:
                where = f"{class_name}/{folder}/{path.stem}"
                files.append(
                    SubmissionFile(
                        str(path), class_name, f"anomaly_images/{where}.tiff", f"anomaly_images_thresholded/{where}.png"
                    )
                )
        return files

    def class_names(self) -> list[str]:
        return class_names(self.root, DATASET, LAYOUT)

    def samples(self, class_name: str, split: str) -> list[Sample]:
        if split in ("train", "validation"):
            return normal_samples(self.root, class_name, split, DATASET)
        if split != "test":
            raise DataError(f"dataset mvtec_ad2 has no split {split!r}; expected train, validation or test")
        test = self.root / class_name / "test_public"
        if not test.is_dir():
            raise DataError(
                f"class {class_name!r} has no public test images: {test} is missing; "
                f"expected {test}/good/*.png and {test}/bad/*.png ({DATASET})"
            )
        samples = []
        for defect in sorted(p.name for p in test.iterdir() if p.is_dir() and p.name != "ground_truth"):
            for path in images(test / defect):
                if defect == "good":
                    samples.append(Sample(str(path), class_name, 0))
                else:
                    samples.append(Sample(str(path), class_name, 1, defect, str(_mask_of(test, defect, path))))
        if not samples:
            raise DataError(
                f"class {class_name!r} has no public test images; expected {test}/good/*.png and {test}/bad/*.png"
            )
        return samples


def _mask_of(test: Path, defect: str, image: Path) -> Path:
    """``test_public/ground_truth/<defect>/<stem>_mask.png`` of an anomalous test image."""
    masks = test / "ground_truth" / defect
    for suffix in dict.fromkeys((".png", image.suffix)):
        candidate = masks / f"{image.stem}{MASK_SUFFIX}{suffix}"
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{image}: anomalous test image without its mask; expected {masks / (image.stem + MASK_SUFFIX + '.png')}"
    )
