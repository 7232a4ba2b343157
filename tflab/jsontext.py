"""JSON text that came from a host, looked at before it is parsed: how deep it nests (a document nested
100,000 deep is a RecursionError in json.loads, so readers refuse it first)."""

from __future__ import annotations

import re

_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[][{}]')  # a string (its brackets are not nesting) or a bracket


def nesting(text: str) -> int:
    """The deepest nesting of arrays and objects in text (0 for a scalar); strings are skipped whole."""
    depth = deepest = 0
    for token in _TOKEN.finditer(text):
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(token.group(), 0)
        deepest = max(deepest, depth)
    return deepest
