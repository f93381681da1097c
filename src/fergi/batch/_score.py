"""Score a release-layout folder (or any folder of images with a prompts table).

Batch work over many images, here or on Ray (:class:`fergi.batch.RayExecutor`), over
the scorers of :mod:`fergi.scorers` (which never import this package).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from fergi._errors import FergiError
from fergi.batch._ray import RayExecutor
from fergi.datasets import sha256_file
from fergi.scorers import ScoreCache, create_scorer, get_scorer_spec, scorers_dir

logger = logging.getLogger(__name__)

#: Scorers whose number does not depend on the prompt (cached under an empty prompt).
PROMPT_FREE = {"aesthetic"}


@dataclass
class _Table:
    path: Path           # the CSV to rewrite
    header: list[str]
    rows: list[list[str]]
    images: list[Path | None]   # per row; None: no image file
    prompts: list[str]


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader)
            rows = [r for r in reader if r]
    except (OSError, StopIteration, csv.Error, UnicodeDecodeError) as exc:
        raise FergiError(f"{path}: cannot read the table ({type(exc).__name__}: {exc})") from None
    return header, rows


def _col(path: Path, header: list[str], name: str) -> int:
    try:
        return header.index(name)
    except ValueError:
        raise FergiError(f"{path}: missing column {name!r}") from None


def _release_tables(data: Path) -> list[_Table]:
    """The per-participant image tables of a release-layout folder, with images and prompts."""
    prep = data / "preparation" / "preprocessed_image_data"
    prompts_csv = data / "study" / "prompts.csv"
    files = sorted(prep.glob("*.csv"))
    if not files:
        raise FergiError(f"{prep}: no participant tables (is {data} a fergi export or the release?)")
    if not prompts_csv.is_file():
        raise FergiError(f"{prompts_csv}: no prompts table; the release does not hold its prompts, "
                         "export the study with `fergi export` or pass --prompts")
    header, rows = _read_csv(prompts_csv)
    ip, iss, ipr = (_col(prompts_csv, header, c) for c in ("participant", "session", "prompt"))
    prompts = {(r[ip], str(int(float(r[iss])))): r[ipr] for r in rows}
    tables = []
    for path in files:
        pid = path.stem
        header, rows = _read_csv(path)
        js, ji = _col(path, header, "session_index"), _col(path, header, "image_index")
        images, texts = [], []
        for r in rows:
            s, i = str(int(float(r[js]))), str(int(float(r[ji])))
            prompt = prompts.get((pid, s))
            if prompt is None:
                raise FergiError(f"{prompts_csv}: no prompt for participant {pid} session {s}")
            image = data / "images" / pid / f"session_{s}" / f"image_{i}.png"
            images.append(image if image.is_file() else None)
            texts.append(prompt)
        tables.append(_Table(path, header, rows, images, texts))
    return tables


def _prompt_table(data: Path, table: Path, out: Path) -> list[_Table]:
    """Any table with ``image`` (a path, relative to ``data``) and ``prompt`` columns."""
    header, rows = _read_csv(table)
    ji, jp = _col(table, header, "image"), _col(table, header, "prompt")
    images = []
    for r in rows:
        p = Path(r[ji])
        p = p if p.is_absolute() else data / p
        images.append(p if p.is_file() else None)
    return [_Table(out, header, rows, images, [r[jp] for r in rows])]


def _write_atomic(table: _Table, columns: dict[str, list[str]]) -> None:
    header = list(table.header)
    rows = [list(r) + [""] * (len(header) - len(r)) for r in table.rows]
    for name, values in columns.items():
        if name not in header:
            header.append(name)
            for r in rows:
                r.append("")
        j = header.index(name)
        for r, v in zip(rows, values, strict=True):
            r[j] = v
    tmp = table.path.with_name(f".{table.path.name}.tmp")
    table.path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *rows])
    os.replace(tmp, table.path)


def _score_one(spec, scorer, present, hashes, store, summary, progress) -> tuple[list, dict]:
    """Score the images of ``present`` not in the cache with one scorer (local or on Ray).

    Returns each image's cache key and the scores by key.
    """
    keys = [(hashes[t.images[k]], "" if spec.name in PROMPT_FREE else t.prompts[k])
            for t, k in present]
    known = store.get(spec.name, scorer.fingerprint, keys) if store else {}
    todo = sorted({key: i for i, key in enumerate(keys) if key not in known}.values())
    summary["cached"][spec.name] = len(keys) - len(todo)
    summary["scored"][spec.name] = len(todo)
    bar = tqdm(total=len(todo), desc=spec.name, unit="img", disable=not progress)
    todo_images = [present[i][0].images[present[i][1]] for i in todo]
    todo_prompts = [present[i][0].prompts[present[i][1]] for i in todo]
    for positions, values in scorer.iter_batches(todo_images, todo_prompts):
        new = [(keys[todo[p]], v) for p, v in zip(positions, values, strict=True)]
        known.update(new)
        if store:
            store.put(spec.name, scorer.fingerprint, new)
        bar.update(len(positions))
    bar.close()
    return keys, known


def score_folder(data, scorers: Sequence[str], *, prompts=None, out=None, weights: dict | None = None,
                 device=None, batch_size: int = 16, precision: str = "fp32", cache=True,
                 progress: bool = False, executor=None) -> dict:
    """Compute baseline scores for every image of a folder and write them beside the data.

    Parameters
    ----------
    data : path
        A release-layout folder (``fergi export`` output: ``images/<participant>/
        session_<s>/image_<i>.png``, prompts in ``study/prompts.csv``), whose
        ``preparation/preprocessed_image_data/<participant>.csv`` get the scorers'
        release columns (``CLIP_score``, ..., ``HPS_V2_score``; ``hpsv2.1`` adds
        ``HPS_V2.1_score``); or any folder when ``prompts`` is given.
    scorers : sequence of str
        Registry names (:func:`fergi.scorers.list_scorers`).
    prompts : path, optional
        A CSV with ``image`` (path relative to ``data``) and ``prompt`` columns; the
        scores are written to ``out`` (default ``data/scores.csv``) with its columns.
    weights : dict, optional
        ``name -> create_scorer options`` (``{"weights": path, ...}``).
    device, batch_size
        Passed to :func:`fergi.scorers.create_scorer`.
    precision : {"fp32", "fp16"}
        The models' dtype (fp32 by default on every device).
    cache : bool or path
        The :class:`ScoreCache` file (default ``$FERGI_SCORERS_DIR/scores.sqlite``);
        ``False`` scores everything again. Scores are keyed by the weights' hash and
        the precision too, so fp16 and fp32 scores are kept apart.
    progress : bool
        A progress bar on stderr.
    executor : None, "local", "ray" or fergi.batch.RayExecutor
        Where the models run: here, one after another (default), or in Ray actors
        (one per GPU, the images split across them; the same scores).

    Returns
    -------
    dict
        ``tables`` (files written), ``images``, ``scored`` and ``cached`` (per scorer)
        and ``missing`` (images without a file, left blank).

    Raises
    ------
    fergi.FergiError
        Unknown scorer, missing weights, unreadable tables or images.
    """
    data = Path(data)
    if not data.is_dir():
        raise FergiError(f"{data}: no such folder")
    specs = [get_scorer_spec(n) for n in scorers]
    if not specs:
        raise FergiError("--scorers: give at least one scorer")
    if prompts is not None:
        tables = _prompt_table(data, Path(prompts), Path(out) if out else data / "scores.csv")
    else:
        tables = _release_tables(data)
    items = [(t, k) for t in tables for k in range(len(t.rows))]
    for t, k in items:
        if t.images[k] is None:
            logger.warning("%s row %d: no image file; its scores are left blank", t.path, k + 1)
    present = [(t, k) for t, k in items if t.images[k] is not None]
    hashes = {}
    for t, k in present:
        p = t.images[k]
        if p not in hashes:
            hashes[p] = sha256_file(p)

    on_ray = executor is not None and executor != "local"
    if on_ray and isinstance(executor, str):
        if executor != "ray":
            raise FergiError(f"--executor {executor!r}: expected local or ray")
        executor = RayExecutor()
    store = None
    if cache:
        store = ScoreCache(scorers_dir() / "scores.sqlite" if cache is True else cache)
    summary = {"tables": [str(t.path) for t in tables], "images": len(present),
               "missing": len(items) - len(present), "scored": {}, "cached": {}}
    columns: dict[int, dict[str, list[str]]] = {id(t): {} for t in tables}
    session = executor.session() if on_ray else contextlib.nullcontext()
    try:
        with session:
            for spec in specs:
                options = {**(weights or {}).get(spec.name, {}), "precision": precision}
                if on_ray:
                    scorer = executor.scorer_pool(spec.name, device=device, batch_size=batch_size,
                                                  **options)
                else:
                    scorer = create_scorer(spec.name, device=device, batch_size=batch_size, **options)
                try:
                    keys, known = _score_one(spec, scorer, present, hashes, store, summary, progress)
                finally:
                    if on_ray:
                        scorer.close()
                    del scorer  # one model in memory at a time
                for t in tables:
                    columns[id(t)][spec.column] = [""] * len(t.rows)
                for (t, k), key in zip(present, keys, strict=True):
                    columns[id(t)][spec.column][k] = repr(float(known[key]))
    finally:
        if store:
            store.close()
    for t in tables:
        _write_atomic(t, columns[id(t)])
    return summary

