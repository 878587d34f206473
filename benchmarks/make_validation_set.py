"""Build a validation set from a dataset's *training* images, for choosing recipes honestly.

    python benchmarks/make_validation_set.py --source PATH/TO/realmix-dev --out PATH/TO/realmix-val

For each class, a fifth of the normal training images is held out: each becomes a test/good
image, and a copy of it with one synthetic defect (scratch, crack, stain, missing or pasted
part, from the demo dataset's defect generator) becomes a test/synthetic image with its exact
mask. The other training images stay the training set (linked, not copied). The source's test
split is never read, so a recipe chosen on this set has not seen the test images.

``--strength`` blends each defect into its image at that opacity (1 = as generated). Full-strength
defects are easy to see, so recipes that differ only on faint defects (real ones often are) score
alike on such a set; ``--strength 0.3`` makes a harder set with the same images, the same defect
shapes and masks, and the same train/test split (the seed alone decides both):

    python benchmarks/make_validation_set.py --source PATH/TO/realmix-dev --out PATH/TO/realmix-val-faint --strength 0.3
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="MVTec-layout root; only <class>/train/good is read")
    parser.add_argument("--out", required=True, help="folder to (re)create in MVTec layout")
    parser.add_argument("--holdout", type=float, default=0.2, help="fraction of each class's training images held out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strength", type=float, default=1.0, help="opacity of each defect, in (0, 1]")
    args = parser.parse_args()
    if not 0.0 < args.strength <= 1.0:
        parser.error(f"--strength must be in (0, 1], got {args.strength}")

    from uadp_plugins.datasets._demo_defects import DEFECT_KINDS, apply_defect

    source, out = Path(args.source).resolve(), Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    rng = np.random.default_rng(args.seed)
    for folder in sorted(p for p in source.iterdir() if (p / "train" / "good").is_dir()):
        files = sorted((folder / "train" / "good").iterdir())
        held_out = set(rng.permutation(len(files))[: max(1, int(len(files) * args.holdout))].tolist())
        for sub in ("train/good", "test/good", "test/synthetic", "ground_truth/synthetic"):
            (out / folder.name / sub).mkdir(parents=True)
        held = [f for i, f in enumerate(files) if i in held_out]
        for i, f in enumerate(files):
            if i not in held_out:
                (out / folder.name / "train" / "good" / f.name).symlink_to(f)
        for j, f in enumerate(held):
            (out / folder.name / "test" / "good" / f.name).symlink_to(f)
            image = np.asarray(Image.open(f).convert("RGB"))
            donor = np.asarray(Image.open(held[(j + 1) % len(held)]).convert("RGB"))
            if donor.shape != image.shape:
                donor = None
            kind = DEFECT_KINDS[rng.integers(len(DEFECT_KINDS))]
            defective, mask = apply_defect(kind, image, rng, donor=donor)
            if args.strength < 1.0:
                blend = image + args.strength * (defective.astype(np.float32) - image)
                defective = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
            Image.fromarray(defective).save(out / folder.name / "test" / "synthetic" / f"{j:03d}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(
                out / folder.name / "ground_truth" / "synthetic" / f"{j:03d}_mask.png"
            )
        print(f"{folder.name}: {len(files) - len(held)} train, {len(held)} good + {len(held)} synthetic test images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
