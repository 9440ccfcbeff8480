"""Values fitted on data (fusion weights, the second stage, the answerability model, answer settings).

They live in ``rag/data/fitted.json``, one section per fitted thing, each with its ``values`` and
the ``provenance`` the tuning command recorded: the command, date, question file and its hash,
split, embedding model, chunker and tokenizer versions, and the dev metrics it reached. Only
``eval/tune.py`` writes the file. ``mismatches`` tells when an index was built with other settings
than the values were fitted on (``rag eval`` and ``rag bench`` print it as a warning).
"""

from __future__ import annotations

import json
import os
import tempfile
from functools import lru_cache
from importlib import resources
from pathlib import Path

SECTIONS = ("fusion", "second_stage", "answerability", "answer", "generated")
# What an index must share with the data a value was fitted on for the value to mean the same.
MATCHED_SETTINGS = ("model", "chunker", "chunker_version", "tokenizer_version")


def fitted_path() -> Path:
    """The data file inside the package (what the library loads and the tuning commands write)."""
    return Path(str(resources.files("rag.data").joinpath("fitted.json")))


@lru_cache(maxsize=1)
def _load() -> dict:
    return json.loads(fitted_path().read_text(encoding="utf-8"))


def values(section: str) -> dict:
    """The fitted values of one section (a fresh copy: callers may change their own settings)."""
    return json.loads(json.dumps(_load()[section]["values"]))


def provenance(section: str) -> dict:
    """Where one section's values came from."""
    return dict(_load()[section]["provenance"])


def mismatches(manifest: dict) -> list[str]:
    """One line per fitted section whose provenance names other index settings than ``manifest``."""
    lines = []
    for section in SECTIONS:
        origin = provenance(section)
        differing = [key for key in MATCHED_SETTINGS if key in origin and origin[key] != manifest.get(key)]
        if differing:
            lines.append(f"警告 / warning: fitted values '{section}' were fitted with other "
                         f"{', '.join(differing)} than this index (refit with eval/tune.py on dev)")
    return lines


def write_section(section: str, fitted_values: dict, origin: dict, path: Path | None = None) -> Path:
    """Replace one section of the data file (atomically) and return the file written."""
    if section not in SECTIONS:
        raise ValueError(f"unknown fitted section {section!r}")
    path = path or fitted_path()
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    data[section] = {"values": fitted_values, "provenance": origin}
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".fitted-", suffix=".json")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump(data, out, ensure_ascii=False, indent=2)
        out.write("\n")
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)
    _load.cache_clear()
    return path
