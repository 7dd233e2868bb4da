"""Whether a run is trained here rather than loaded from the committed runs.

Two switches, read from the environment each time they are asked:

* ``POLAR_VBLL_RETRAIN=1``: every run trains here (:func:`retrain_requested`);
* ``POLAR_VBLL_LIVE``: a notebook's final fine-tune trains here (:func:`live_requested`): ``1``
  always, ``0`` never, unset or ``auto`` on a GPU.

:mod:`polar_vbll.pretrained` acts on them; :func:`polar_vbll.profiles.start_notebook` says what
they mean for the notebook it starts.
"""

from __future__ import annotations

import os

import torch

from polar_vbll import models
from polar_vbll.errors import ConfigError

RETRAIN_ENV = "POLAR_VBLL_RETRAIN"
LIVE_ENV = "POLAR_VBLL_LIVE"  # auto (default: on a GPU) | 1 | 0


def retrain_requested() -> bool:
    return os.environ.get(RETRAIN_ENV, "").strip() not in ("", "0", "false", "False")


def live_requested(device: torch.device | str | None = None) -> bool:
    """Whether a notebook's final fine-tune trains here: ``POLAR_VBLL_LIVE`` = 1 or 0, or unset /
    ``auto``: on a GPU (``device``, default :func:`polar_vbll.models.default_device`)."""
    value = os.environ.get(LIVE_ENV, "").strip().lower()
    if value in ("", "auto"):
        return torch.device(device or models.default_device()).type == "cuda"
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{LIVE_ENV}={value!r}: expected auto, 1 or 0")
