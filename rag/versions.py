"""Index versions on disk: every build writes a new version folder, then one link swap makes it live.

Layout of an index folder::

    index/
      current -> v-20261125T160000-…-1234   (symlink, swapped atomically after a build)
      v-…/manifest.json                    (format, model, dimension, chunker, tokenizer, corpus hashes)
      v-…/…                                (the store's files)

A build writes into a hidden ``.build-…`` folder, renames it to ``v-…`` when complete, and only then
points ``current`` at it, so readers always see a whole version and a crash never breaks the live one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

CURRENT = "current"
MANIFEST = "manifest.json"
REBUILD_HINT = "请运行 `rag index` 重新建立索引 / run `rag index` to (re)build it"


def live_dir(index_dir: Path) -> Path:
    """The folder of the live version (through the ``current`` link)."""
    return index_dir / CURRENT


def read_manifest(index_dir: Path) -> dict | None:
    """The live index's manifest, or None when there is no readable index."""
    try:
        manifest = json.loads((live_dir(index_dir) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


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
    """Make a completed build folder the live version, then remove older versions."""
    os.replace(build_dir, index_dir / version)
    link = index_dir / f".current-{os.getpid()}"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(version)
    os.replace(link, index_dir / CURRENT)
    _remove_stale_versions(index_dir, version)


def _remove_stale_versions(index_dir: Path, keep: str) -> None:
    for entry in index_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink() and entry.name.startswith(("v-", ".build-")) \
                and entry.name != keep:
            shutil.rmtree(entry, ignore_errors=True)
