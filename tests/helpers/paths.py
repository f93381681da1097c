"""Where things are, for tests at any depth under ``tests/``."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SRC = REPO_ROOT / "src"
BENCHMARKS = REPO_ROOT / "benchmarks"
TOOLS = REPO_ROOT / "tools"
TEST_DATA = REPO_ROOT / "tests" / "data"
# The authors' public release, beside the checkout (never committed).
PUBLIC_RELEASE = REPO_ROOT.parent / "shared" / "fergi-public"
