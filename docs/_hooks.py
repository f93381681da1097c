"""mkdocs hook: turn the Sphinx roles of fergi's docstrings into links in the API pages.

fergi's numpydoc docstrings refer to other names the Sphinx way (``:func:`load_frames```,
``:class:`~fergi.preference.AUcombValence```). mkdocstrings renders the backquoted name
as code but leaves the role in front of it (":func:load_frames"). After the build, this
hook links each such name to the API page that documents it (the ``id`` mkdocstrings
gives every object), resolved as Sphinx would: the full name, then the name inside the
page's package, then a unique object of that name; a name that is not documented (e.g.
``pandas.DataFrame``) keeps its code formatting without the role.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|data|attr|mod|obj|exc):<code>([^<]+)</code>")
_ID = re.compile(r'id="(fergi(?:\.[A-Za-z_][A-Za-z0-9_]*)+)"')


def _resolve(name: str, package: str, ids: dict[str, Path], by_last: dict[str, list[str]]) -> str | None:
    name = name.lstrip("~!").removesuffix("()")
    for candidate in (name, f"{package}.{name}"):
        if candidate in ids:
            return candidate
    # `Class.method` or a bare name documented once anywhere: unique suffix match.
    matches = [i for i in by_last.get(name.rsplit(".", 1)[-1], []) if i.endswith("." + name)]
    local = [i for i in matches if i.startswith(package + ".")]
    for found in (local, matches):
        if len(found) == 1:
            return found[0]
    return None


def on_post_build(config, **kwargs) -> None:
    api = Path(config["site_dir"]) / "api"
    pages = sorted(api.glob("*/index.html"))
    ids: dict[str, Path] = {}
    for page in pages:
        for object_id in _ID.findall(page.read_text(encoding="utf-8")):
            ids.setdefault(object_id, page)
    by_last: dict[str, list[str]] = {}
    for object_id in ids:
        by_last.setdefault(object_id.rsplit(".", 1)[-1], []).append(object_id)

    for page in pages:
        html = page.read_text(encoding="utf-8")
        # The page's package: the first object it documents (its root heading).
        first = _ID.search(html)
        package = first.group(1) if first else "fergi"

        def link(match: re.Match, page: Path = page, package: str = package) -> str:
            text = match.group(1)
            target = _resolve(text, package, ids, by_last)
            shown = text.lstrip("~!")
            if text.startswith("~"):
                shown = shown.rsplit(".", 1)[-1]
            code = f"<code>{shown}</code>"
            if target is None:
                return code
            href = os.path.relpath(ids[target].parent, page.parent).replace(os.sep, "/")
            href = "" if href == "." else href + "/"
            return f'<a class="autorefs" href="{href}#{target}">{code}</a>'

        new = _ROLE.sub(link, html)
        if new != html:
            page.write_text(new, encoding="utf-8")
