"""Class-aware references for CADA: the same mean-max normalisation, but with each class's
stored statistics (u_c, gamma_c) of its normal training maps. These are the CaDA-A and CaDA-B
variants of the CADA paper ("Absolute-Unified Multi-Class Anomaly Detection via Class-Agnostic
Distribution Alignment").

* ``class-stats`` (CaDA-A) looks them up with the test image's **true** class: an oracle that
  a line with unknown parts cannot have. It bounds what a perfect class-agnostic aligner
  could reach with per-class statistics, and a run using it is tagged as not class-agnostic.
* ``class-classifier`` (CaDA-B) learns the class from the training labels with the CADA head
  (k-way output, cross-entropy) and looks up the predicted class's statistics; no label is
  needed at test time.

The aligners themselves live in ``class_aware_model.py``; this module registers them with their
options, so listing the aligners imports no torch.
"""

from __future__ import annotations

from uadp.plugin import hookimpl

from ._options import HeadConfig, MappingConfig


@hookimpl
def register_aligners(register):
    register(
        "class-stats",
        "uadp_plugins.aligners.class_aware_model:ClassStats",
        config=MappingConfig,
        class_labels="train+test",
        help="CaDA-A oracle: each test image's TRUE class's normal (mean, max); a reference, not class-agnostic",
    )
    register(
        "class-classifier",
        "uadp_plugins.aligners.class_aware_model:ClassClassifier",
        config=HeadConfig,
        class_labels="train",
        help="CaDA-B: a head learns the class from the training labels, then its stored normal (mean, max)",
    )
