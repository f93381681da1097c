"""A named registry of specs, shared by the AU estimators and the image scorers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from fergi._errors import FergiError

Spec = TypeVar("Spec")


class Registry(Generic[Spec]):
    """Specs by name (each with a ``name`` attribute), in registration order.

    Parameters
    ----------
    what : str
        What a spec is, for messages (``"AU estimator"``).
    option : str
        The command-line option that names one (``"--estimator"``), for messages.
    sort : bool
        List names alphabetically instead of in registration order.
    """

    def __init__(self, what: str, option: str, *, sort: bool = False):
        self.what = what
        self.option = option
        self.sort = sort
        self._specs: dict[str, Spec] = {}

    def register(self, spec: Spec) -> None:
        """Add (or replace) a spec."""
        self._specs[spec.name] = spec

    def names(self) -> list[str]:
        return sorted(self._specs) if self.sort else list(self._specs)

    def get(self, name: str) -> Spec:
        """The spec of ``name``; an unknown name is a one-line :class:`fergi.FergiError`."""
        try:
            return self._specs[name]
        except KeyError:
            raise FergiError(
                f"{self.option} {name!r}: unknown {self.what} (choose from {', '.join(self.names())})"
            ) from None

    def __iter__(self) -> Iterator[Spec]:
        return iter(self._specs.values())

    def __contains__(self, name: object) -> bool:
        return name in self._specs
