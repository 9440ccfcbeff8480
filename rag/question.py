"""What a question asks for, as far as plain patterns can tell (used by the second stage and abstention)."""

from __future__ import annotations

import re

ASKS_QUANTITY = re.compile(r"多少|几|多大|多长|多高|多快|多久|比例|占比|百分|分数|得分|多强")


def asks_quantity(question: str) -> bool:
    """True when the question asks for a number (多少, 几, 占比 …)."""
    return bool(ASKS_QUANTITY.search(question))
