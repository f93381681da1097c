"""The ``fergi`` command line: one module per subcommand over library functions."""

from fergi.cli._main import main

__all__ = ["main"]
