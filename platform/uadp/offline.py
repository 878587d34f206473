"""uadp works offline: no dependency it imports may reach out to the network on its own.

Several libraries uadp uses contact outside hosts unless told not to: OpenVINO sends usage
telemetry to Google Analytics when it is imported (from a thread pool that a process forked
while it runs can inherit in a locked state, so that the process never exits), albumentations
asks PyPI whether a newer release exists, and MLflow 3 and the Hugging Face hub client send
usage telemetry. :func:`stay_offline` turns each of these off. It runs when the ``uadp``
package is imported, before any of those libraries, so every command, every process uadp
starts (they inherit the environment) and ``import uadp`` in a user's own script hold to it.

The network is then used only where the user asked for it: a tracking server named in
``MLFLOW_TRACKING_URI``, or backbone weights from the model hub (``backbone.weights=timm``,
or a backbone without offline weights).
"""

from __future__ import annotations

import os
import sys

# Each library's own switch, set whatever the environment said: uadp promises not to phone home.
TELEMETRY_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow 3's usage telemetry
    "DO_NOT_TRACK": "true",  # the common opt-out, which MLflow also reads
    "NO_ALBUMENTATIONS_UPDATE": "1",  # albumentations' check for a newer release on PyPI, at import
    "HF_HUB_DISABLE_TELEMETRY": "1",  # the model hub client's usage reports
}

# OpenVINO reports usage through this optional package and has no switch for it other than a
# consent file in the user's home folder; without the package it uses its own no-op stand-in.
OPENVINO_TELEMETRY = "openvino_telemetry"


def stay_offline() -> None:
    """Turn off every dependency's telemetry and update checks, for this process and its children."""
    os.environ.update(TELEMETRY_OFF)
    # None in sys.modules makes ``import openvino_telemetry`` fail, so OpenVINO takes its stand-in;
    # if it was imported already (OpenVINO imported before uadp), it is left as it is.
    sys.modules.setdefault(OPENVINO_TELEMETRY, None)  # type: ignore[arg-type]  # typeshed types values as modules only
