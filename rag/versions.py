"""Index versions on disk: every build writes a new version folder, then one link swap makes it live.

Layout of an index folder::

    index/
      current -> v-20261125T160000-…-1234   (symlink, swapped atomically after a build)
      v-…/manifest.json                    (format, model, dimension, chunker, tokenizer, corpus hashes)
      v-…/…                                (the store's files)

A build writes into a hidden ``.build-…`` folder, renames it to ``v-…`` when complete, and only then
points ``current`` at it, so readers always see a whole version and a crash never breaks the live one.
Writers hold an inter-process lock (``index/.lock``) for the whole build, so two builds of one index
never tread on each other's folders; readers resolve ``current`` once and load every file from that
one version, and the previous version is kept until the next build, so a reader that resolved it
just before a swap can still finish loading it. The manifest records every file's size and SHA-256.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import RagError
from .model_fetch import sha256_of

CURRENT = "current"
MANIFEST = "manifest.json"
LOCK = ".lock"
SPOOL_PREFIX = ".spool-"  # a write session's vectors: .spool-<pid>-<ns> (rag.faiss_store)
REBUILD_HINT = "请运行 `rag index` 重新建立索引 / run `rag index` to (re)build it"


def live_dir(index_dir: Path) -> Path:
    """The folder of the live version (through the ``current`` link)."""
    return index_dir / CURRENT


def resolve_live(index_dir: Path) -> Path | None:
    """The live version's folder, resolved once (``current`` may be a link or, in a copied index, a folder)."""
    live = live_dir(index_dir)
    try:
        if live.is_symlink():
            return index_dir / os.readlink(live)
        return live if live.is_dir() else None
    except OSError:
        return None


def manifest_of(folder: Path | None) -> dict | None:
    """A version folder's manifest, or None when it is missing or not a JSON object."""
    if folder is None:
        return None
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def read_manifest(index_dir: Path) -> dict | None:
    """The live index's manifest, or None when there is no readable index."""
    return manifest_of(resolve_live(index_dir))


def check_target(index_dir: Path) -> None:
    """Refuse an index location that cannot hold an index, before any work is done."""
    for folder in (index_dir, *index_dir.parents):
        if folder.exists() and not folder.is_dir():
            raise RagError(f"索引位置不是文件夹：{folder} / the index location is not a folder: {folder}")
        if folder.exists():
            break


def live_version(index_dir: Path) -> str | None:
    """Which version is live (cheap: one readlink, or the manifest's build time for a copied index)."""
    try:
        return os.readlink(live_dir(index_dir))
    except OSError:
        manifest = read_manifest(index_dir)
        return None if manifest is None else str(manifest.get("built_at"))


def new_version_name() -> str:
    """A version folder name that sorts by time and cannot collide with another process's."""
    return f"v-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**9:09d}-{os.getpid()}"


def write_manifest(folder: Path, manifest: dict) -> None:
    """Write a version's manifest (the last file a build writes into its folder)."""
    (folder / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8")


def publish(index_dir: Path, build_dir: Path, version: str) -> None:
    """Make a completed build folder the live version (call with the writer lock held), then remove
    what no reader can need any more: every version but this one and the one it replaces."""
    os.replace(build_dir, index_dir / version)
    live = live_dir(index_dir)
    previous = resolve_live(index_dir)
    if live.is_dir() and not live.is_symlink():
        # An index copied with `cp -rL`: the live version is a plain folder named "current".
        previous = index_dir / f"v-copied-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        os.replace(live, previous)
    link = index_dir / f".current-{os.getpid()}"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(version)
    os.replace(link, live)
    clean_leftovers(index_dir, keep={version} | ({previous.name} if previous else set()))


def clean_leftovers(index_dir: Path, keep: set[str]) -> list[str]:
    """Remove interrupted builds, stray link files and versions not in ``keep`` (writer lock held);
    returns what was removed."""
    removed = []
    for entry in index_dir.iterdir():
        if entry.name == CURRENT or entry.name in keep:
            continue
        if entry.name.startswith(".current-") and (entry.is_symlink() or entry.is_file()):
            entry.unlink(missing_ok=True)
            removed.append(entry.name)
        elif entry.is_dir() and not entry.is_symlink() and (
                entry.name.startswith(("v-", ".build-")) or _abandoned_spool(entry.name)):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    return removed


def _abandoned_spool(name: str) -> bool:
    """Whether ``name`` is the spool folder of a write session whose process is gone."""
    if not name.startswith(SPOOL_PREFIX):
        return False
    pid = name[len(SPOOL_PREFIX):].split("-", 1)[0]
    if not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


@contextmanager
def writer_lock(index_dir: Path, log: Callable[[str], None] = lambda message: None) -> Iterator[None]:
    """Hold the index's inter-process writer lock; a second writer waits for the first, saying so."""
    check_target(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    with open(index_dir / LOCK, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("另一个进程正在建立此索引，等待它完成… / another build of this index is running; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def file_checksums(folder: Path) -> dict[str, dict]:
    """Size and SHA-256 of every file of a version folder but its manifest, by relative path."""
    return {str(path.relative_to(folder)): {"size": path.stat().st_size, "sha256": sha256_of(path)}
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MANIFEST}


def file_problems(folder: Path, recorded: object, hashes: bool) -> list[str]:
    """What does not match the manifest's file list: missing, resized or (with ``hashes``) changed files."""
    if not isinstance(recorded, dict) or not recorded:
        return ["清单中没有文件校验信息 / the manifest lists no file checksums"]
    problems = []
    for relative, expected in recorded.items():
        path = folder / relative
        if not path.is_file():
            problems.append(f"缺少文件 / missing file: {relative}")
        elif not isinstance(expected, dict) or path.stat().st_size != expected.get("size"):
            problems.append(f"文件大小不符 / size differs: {relative}")
        elif hashes and sha256_of(path) != expected.get("sha256"):
            problems.append(f"文件内容已改变 / checksum differs: {relative}")
    return problems
