"""The documentation: `mkdocs build --strict` passes, and every guide can be reached.

The build runs mkdocstrings over the public packages, so a broken link, a missing anchor,
a reference to a name that no longer exists or a docstring griffe cannot parse fails
here, with mkdocs' own output in the failure message.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.paths import REPO_ROOT

DOCS = REPO_ROOT / "docs"
CONFIG = REPO_ROOT / "mkdocs.yml"


def _mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
         "--site-dir", str(site)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )


def _load_config(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _nav_pages(nav) -> list[str]:
    """Every page path in a mkdocs ``nav`` (nested lists of strings and one-key dicts)."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [p for value in nav.values() for p in _nav_pages(value)]
    return [p for item in nav for p in _nav_pages(item)]


@pytest.mark.slow
def test_mkdocs_build_strict_passes_and_renders_the_api(tmp_path):
    site = tmp_path / "site"
    result = _mkdocs_build(CONFIG, site)
    assert result.returncode == 0, (
        f"mkdocs build --strict failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
    )
    # mkdocstrings rendered the public names, not an empty page: one object per package.
    for page, name in [("au", "fergi.au.create_au_estimator"),
                       ("preference", "fergi.preference.AUcombValence"),
                       ("study", "fergi.study.create_app"),
                       ("datasets", "fergi.datasets.fetch_fergi")]:
        html = (site / "api" / page / "index.html").read_text(encoding="utf-8")
        assert f'id="{name}"' in html, f"{name} is missing from the API page api/{page}.md"

    # docs/_hooks.py turned the docstrings' Sphinx roles into links: none is left as text,
    # and every link it made lands on an object that a page documents.
    api_pages = sorted((site / "api").glob("*/index.html"))
    ids = {page.parent: set(re.findall(r'id="([^"]+)"', page.read_text(encoding="utf-8")))
           for page in api_pages}
    dead, roles = [], []
    for page in api_pages:
        html = page.read_text(encoding="utf-8")
        roles += [f"{page.parent.name}: {m}" for m in re.findall(r":(?:func|class|meth):<code>[^<]+", html)]
        for href, anchor in re.findall(r'class="autorefs" href="([^"#]*)#(fergi[^"]+)"', html):
            target = (page.parent / href).resolve()
            if anchor not in ids.get(target, set()):
                dead.append(f"{page.parent.name}: {href}#{anchor}")
    assert not roles, f"Sphinx roles left as text in the API pages: {roles[:10]}"
    assert not dead, f"links to objects no API page documents: {dead[:10]}"


@pytest.mark.slow
def test_a_broken_link_or_anchor_fails_the_strict_build(tmp_path):
    """The project's `validation` settings turn a dead link or anchor into a failure."""
    config = _load_config(CONFIG)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text(
        "# Home\n\nSee [the guide](guide.md#no-such-section) and [a lost page](gone.md).\n",
        encoding="utf-8")
    (docs / "guide.md").write_text("# Guide\n\n## A section\n", encoding="utf-8")
    config.update(docs_dir=str(docs), nav=["index.md", "guide.md"],
                  plugins=["search"],  # no API pages here: the links are what is tested
                  hooks=[str(REPO_ROOT / hook) for hook in config.get("hooks", [])])
    config_file = tmp_path / "mkdocs.yml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")

    result = _mkdocs_build(config_file, tmp_path / "site")
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"a broken link passed the strict build:\n{output}"
    # Both as warnings (mkdocs reports a missing anchor only as INFO by default).
    assert re.search(r"WARNING.*no-such-section", output), output
    assert re.search(r"WARNING.*gone\.md", output), output


def test_every_guide_is_linked_from_the_readme_and_the_nav():
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.glob("*.md"))
    assert "index.md" in pages and len(pages) > 1
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\(docs/([^)#\s]+\.md)(?:#[^)]*)?\)", readme))
    not_in_readme = [p for p in pages if p not in linked]
    assert not not_in_readme, f"docs pages not linked from README.md: {not_in_readme}"
    dead = sorted(p for p in linked if not (DOCS / p).is_file())
    assert not dead, f"README.md links to docs pages that do not exist: {dead}"

    nav = set(_nav_pages(_load_config(CONFIG)["nav"]))
    every_page = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    not_in_nav = [p for p in every_page if p not in nav]
    assert not not_in_nav, f"docs pages missing from the nav of mkdocs.yml: {not_in_nav}"
