"""A pytest plugin for `make mutate` only (pyproject.toml [tool.mutmut] loads it with -p).

mutmut 3.7 reads `item._nodeid`, which pytest 9 no longer has (it keeps `nodeid`); mutmut 3.8 reads `nodeid` but
requires click>=8.4.2, which faust-streaming 0.15.3 refuses. Give each collected item the old attribute."""

from __future__ import annotations

from typing import Any


def pytest_collection_modifyitems(items: list[Any]) -> None:
    for item in items:
        if not hasattr(item, "_nodeid"):
            item._nodeid = item.nodeid
