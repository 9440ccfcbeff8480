"""Table rows read on their own: each cell after its column name.

A row of a table chunk is stored as tab-separated cells ("参数量	1.2亿	15.8亿"); without its header it
does not say which number belongs to what. ``quote_row`` pairs every cell with its column name; the
extractive answer quotes rows this way. (Embedding the sentence units of rows this way instead of
"header row + bare row" was tried: no gain on dev, more false abstentions on holdout.)
"""

from __future__ import annotations

from collections.abc import Callable


def _aligned(header: str, row: str) -> tuple[list[str], list[str]] | None:
    """Column names and cells paired one to one, or None when the row does not line up with the header."""
    names = [cell.strip() for cell in header.split("\t")]
    cells = [cell.strip() for cell in row.split("\t")]
    if len(names) == len(cells) - 1:  # the header's empty corner cell above the row labels was trimmed
        names = ["", *names]
    elif len(cells) < len(names) and len(cells) >= 2:  # the row's empty trailing cells were trimmed
        cells += [""] * (len(names) - len(cells))
    if len(names) != len(cells) or len(cells) < 2:
        return None
    return names, cells


def quote_row(header: str, row: str, asked: Callable[[str], bool] | None = None) -> str:
    """A table row made readable on its own: each cell after its column name.

    ``参数量	1.2亿	15.8亿`` under ``	GPT-1	GPT-2`` reads ``参数量（GPT-1：1.2亿；GPT-2：15.8亿）``;
    under a header that names its first column too, every cell is paired (``企业：浪潮信息；…``).
    When ``asked`` accepts some column names (the question names those columns), only their cells
    are quoted: asked about GPT-2, the row reads ``参数量（GPT-2：15.8亿）``.
    A row whose cells do not line up with the header keeps its cells, separated by `` | ``.
    """
    aligned = _aligned(header, row)
    if aligned is None:
        return " | ".join(cell.strip() for cell in row.split("\t") if cell.strip())
    names, cells = aligned
    columns = list(zip(names[1:], cells[1:], strict=True))
    named = [(name, cell) for name, cell in columns if name and asked is not None and asked(name)]
    pairs = [f"{name}：{cell}" for name, cell in (named or columns) if cell]
    if names[0]:
        return "；".join([f"{names[0]}：{cells[0]}"] * bool(cells[0]) + pairs)
    return f"{cells[0]}（{'；'.join(pairs)}）" if cells[0] else "；".join(pairs)
