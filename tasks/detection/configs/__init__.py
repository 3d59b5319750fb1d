"""The detectors of task=detection, one mmdet-style config file each (``detector=<file name>``).

Each file declares its detector completely: ``model``, the mmdet model config (with ``_base_`` = mmdet's own
model-zoo config where mmdet ships one); ``levels``, the backbone levels its neck takes (``last=n``: the
last n strides; ``strides=[...]``); ``run_values``, which keys of ``model`` take which of the run's values
(``num_classes``, ``level_channels``, ``level_strides``, ``pyramid_strides``, ``upsampler``,
``upsampler_kwargs``, ``recipe.<key>``; a ``.i`` suffix indexes a list; a null value leaves the file's). A
detector whose ``run_values`` use no ``upsampler`` has nothing to upsample with ``upsampler=``. The task sets
``model.backbone`` and the neck's ``in_channels`` itself.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mmengine.config import Config

CONFIG_DIR = Path(__file__).parent


def detector_names() -> list[str]:
    """The detectors that have a config here."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.name.startswith("_"))


def load(name: str) -> Config:
    """The mmengine ``Config`` of detector ``name`` (its ``_base_`` merged in); mmengine is imported only here.

    mmengine finds an ``mmdet::`` base through pkg_resources, whose deprecation warning no user can act on: silenced.
    """
    from mmengine.config import Config

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        return Config.fromfile(str(CONFIG_DIR / f"{name}.py"))
