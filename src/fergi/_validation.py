"""Checks of the tables passed between stages, shared by every stage."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from fergi._errors import FergiError


def require_columns(table: pd.DataFrame, columns: Iterable[str], what: str = "table") -> None:
    """Raise a one-line :class:`~fergi.FergiError` naming the missing columns.

    The message starts with the table's source file (``table.attrs["source"]``, set by
    the loaders) when it has one, else with ``what``.
    """
    if not isinstance(table, pd.DataFrame):
        raise FergiError(f"{what}: expected a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        source = table.attrs.get("source", what)
        raise FergiError(f"{source}: missing column(s) {', '.join(missing)}")
