"""``export_labels`` and ``write_labels``: label chunks through a writer into a staged folder."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pandas as pd

from fergi._atomic import swap_in
from fergi._errors import FergiError
from fergi.datasets import load_images, load_invalid_images
from fergi.features import image_table, screen_participants
from fergi.preference._data import load_reaction_data
from fergi.preference.export._card import dataset_card
from fergi.preference.export._columns import (
    FEATURE_COLUMNS,
    FORMATS,
    SOURCES,
)
from fergi.preference.export._labels import LabelPlan, decide, iter_labels
from fergi.preference.export._privacy import study_salt, withdrawn_participants
from fergi.preference.export._rows import _Context, _rows
from fergi.preference.export._staging import _stage
from fergi.preference.export._study import ImageStore, _session_facts, consent_status
from fergi.preference.export._summary import ExportSummary, _tally, tie_warning
from fergi.preference.export._writers import WRITERS

logger = logging.getLogger(__name__)


def write_labels(chunks: Iterable[pd.DataFrame], out, *, format: str = "pickapic",
                 images: ImageStore | None = None, salt: bytes, captions: dict | None = None,
                 generators: dict | None = None, created: dict | None = None,
                 features: dict | None = None, all_pairs: bool = False,
                 abstentions: str = "drop", min_confidence: float | None = None,
                 shard_size: int = 10_000, overwrite: bool = False, protect=None,
                 card: Callable[[ExportSummary], str] | None = None,
                 source_name: str = "labels", sources=None) -> ExportSummary:
    """Write label chunks (:func:`iter_labels`) as a training dataset, shard by shard.

    Everything is written into a temporary sibling of ``out`` renamed into place at the
    end; on any error it is removed and a previous export at ``out`` is kept.

    Parameters
    ----------
    chunks : iterable of DataFrame
        Label rows with :data:`LABEL_COLUMNS`.
    out : path-like
    format : {"pickapic", "hpdv2", "hf", "jsonl"}
    images : ImageStore
        Needed by every format but ``jsonl``.
    salt : bytes
        The study's salt (:func:`study_salt`).
    captions, generators, created : dict, optional
        ``(participant, session)`` -> prompt, generator name, timestamp.
    features : dict, optional
        ``(participant, session, image)`` -> the 12 activation values (``--with-features``).
    all_pairs, abstentions, min_confidence
        See :func:`decide`.
    shard_size : int
        Rows per shard (parquet file); memory grows with it, not with the pair count.
    overwrite : bool
        Replace a non-empty ``out``.
    protect : path-like, optional
        A folder ``out`` must not be or contain (the study itself).
    card : callable, optional
        ``card(summary) -> str``: the README.md written with the export.
    source_name : str
        What the error messages call the data.
    sources : sequence of str, optional
        The label sources asked for. With more than one, every format but ``jsonl``
        writes one split per source (:func:`split_name`: ``train_reactions``,
        ``train_integrated``, ``train_ranking``), never mixed rows; otherwise the one
        split is ``train``.

    Returns
    -------
    ExportSummary

    Raises
    ------
    fergi.FergiError
        Unknown format, no label to export, a missing image, an unwritable ``out``.
    """
    if format not in FORMATS:
        raise FergiError(f"--format {format!r}: unknown (choose from {', '.join(FORMATS)})")
    if format != "jsonl" and images is None:
        raise FergiError(f"--format {format}: needs the study's images folder")
    if shard_size < 1:
        raise FergiError(f"--shard-size {shard_size}: must be at least 1")
    if format == "hf":
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise FergiError("--format hf: needs Hugging Face datasets "
                             "(pip install 'fergi[export]')") from None
    final = Path(out)
    staged = _stage(final, overwrite, None if protect is None else Path(protect))
    ctx = _Context(salt, images, captions or {}, generators or {}, created or {}, features)
    summary = ExportSummary(out=final, format=format)
    writer = None
    try:
        split_by_source = format != "jsonl" and sources is not None and len(tuple(sources)) > 1
        writer = WRITERS[format](staged, ctx, shard_size, features is not None, split_by_source)
        for chunk in chunks:
            decided = decide(chunk, all_pairs=all_pairs, abstentions=abstentions,
                             min_confidence=min_confidence)
            if decided.empty:
                continue
            _tally(summary, decided)
            writer.add(_rows(decided, ctx))
            summary.n_rows += len(decided)
        if summary.n_rows == 0:
            raise FergiError(_no_label_message(source_name, sources, all_pairs, min_confidence))
        writer.close()
        summary.n_shards = writer.n_shards
        summary.splits = [split for split, shards in writer.shards.items() if shards]
        if card is not None:
            (staged / "README.md").write_text(card(summary))
        info = {"format": format, "rows": summary.n_rows, "splits": summary.splits,
                "ties": summary.n_ties, "per_source": summary.per_source,
                "agreement_with_rankings": {k: {**v, "percent": summary.agreement_percent(k)}
                                            for k, v in summary.agreement.items()},
                **summary.settings}
        (staged / "export_info.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
        swap_in(staged, final)
    except OSError as exc:
        if writer is not None and hasattr(writer, "abort"):
            writer.abort()
        shutil.rmtree(staged, ignore_errors=True)
        raise FergiError(f"--out {final}: export failed, nothing written ({exc.strerror or exc})") from None
    except BaseException:
        if writer is not None and hasattr(writer, "abort"):
            writer.abort()
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return summary


def _no_label_message(source_name: str, sources, all_pairs: bool, min_confidence) -> str:
    """One line: why nothing was exported, and the options that give labels."""
    sources = tuple(sources) if sources is not None else ("reactions",)
    if sources == ("ranking",):
        return (f"{source_name}: no label to export (no session has two ranked valid images of "
                "a participant who is not left out)")
    hints = []
    if not all_pairs:
        hints.append("--all-pairs labels every pair by the sign of its score difference")
    if min_confidence is not None:
        hints.append(f"a --min-confidence below {min_confidence:g} keeps more")
    if "ranking" not in sources:
        hints.append(f"--source ranking (or {','.join(sources)},ranking) exports the participants' "
                     "own rankings")
    reason = ("no pair reached the model's abstention threshold" +
              (" and --min-confidence" if min_confidence is not None else "")
              if not all_pairs or min_confidence is not None else "no pair could be labelled")
    return f"{source_name}: no label to export ({reason}): " + "; ".join(hints or ["check --exclude-participants"])


def _parse_sources(source) -> tuple:
    if isinstance(source, str):
        source = SOURCES if source == "all" else tuple(s.strip() for s in source.split(","))
    source = tuple(source)
    bad = [s for s in source if s not in SOURCES]
    if bad or not source:
        raise FergiError(f"--source {','.join(source)!r}: choose from {', '.join(SOURCES)} or all")
    return source


def export_labels(data, out, *, format: str = "pickapic", source="reactions", model=None,
                  lopo: bool = False, screen: bool = False, all_pairs: bool = False,
                  abstentions: str = "drop", min_confidence: float | None = None,
                  exclude_participants=(), with_features: bool = False,
                  shard_size: int = 10_000, images_dir=None, salt_file=None,
                  overwrite: bool = False, skip_single: bool = False,
                  on_few_baselines: str = "fallback",
                  max_seen_before_s: float | None = 0.5) -> ExportSummary:
    """Export a study's preference labels for reward-model and DPO training.

    Parameters
    ----------
    data : path-like
        A study in the release layout (``fergi export`` output, or the public release
        with an ``images/`` folder added): ``data/``, ``preparation/``, ``images/``, and
        optionally ``study/prompts.csv`` (captions) and ``study/sessions.csv``.
    out : path-like
        The output folder (new or empty unless ``overwrite``).
    format : {"pickapic", "hpdv2", "hf", "jsonl"}
        ``pickapic``: parquet shards ``data/<split>-XXXXX-of-YYYYY.parquet`` in the
        columns of Pick-a-Pic v2 (what Diffusion-DPO's training script reads), fergi's
        ``label_source, confidence, participant, session`` after them. ``hpdv2``:
        ``<split>.json`` as HPD v2's training split (``prompt``, ``file_path`` relative to
        ``train/``, ``human_preference``) with the images in ``train/``, as HPSv2's
        ``HPDDataset`` reads it. ``hf``: a ``datasets.DatasetDict`` (one entry per split)
        saved with ``save_to_disk`` (``datasets.load_from_disk(out)``) with Image
        features. ``jsonl``: ``labels.jsonl`` as ``fergi annotate`` writes it. Every
        format gets a dataset card ``README.md`` and ``export_info.json``.
    source : str or sequence
        ``reactions``, ``integrated``, ``ranking``, a comma-separated list, or ``all``.
        One source is the split ``train``; with several, each is its own split
        (``train_reactions``, ``train_integrated``, ``train_ranking``) in every format
        but ``jsonl``, never mixed rows.
    model : AnnotationModel, optional
        Default: the shipped scale-free model (:func:`~fergi.preference.load_model`).
    lopo : bool
        Label each participant with the model refitted without them (needs rankings):
        the labels' agreement with the rankings is then an honest estimate.
    screen : bool
        Leave participants whose AU4 is unreliable at rest out of the reaction-based
        sources (Sec. 6.2.1), as ``fergi reproduce`` does.
    all_pairs, abstentions, min_confidence
        See :func:`decide`. With ``abstentions="tie"``, a Pick-a-Pic-style export with
        ties logs a warning (:func:`tie_warning`) and its card lists which trainers
        misread ties (:data:`TIE_READERS`).
    exclude_participants : iterable of str
        Participants to leave out (withdrawn consent), besides those listed in
        ``withdrawn.json`` or marked in ``study/sessions.csv``.
    with_features : bool
        Also export each image's 12 AU activation values (never the per-frame traces).
    shard_size : int
        Pairs per shard.
    images_dir : path-like, optional
        Where the images are (default ``data/../images``).
    salt_file : path-like, optional
        Where the pseudonym salt is kept (default ``<data>/.fergi_salt``).
    max_seen_before_s : float or None
        Reaction-based sources leave out (and count, in a warning) images seen before
        for longer than this (default 0.5 s); ranking labels keep them.

    Returns
    -------
    ExportSummary
    """
    root = Path(data)
    if not (root / "data").is_dir():
        raise FergiError(f"{root}: not a study folder (no data/ folder)")
    sources = _parse_sources(source)
    salt = study_salt(root, salt_file=salt_file)
    withdrawn = withdrawn_participants(root) | {str(p) for p in exclude_participants}
    wants_model = any(s in sources for s in ("reactions", "integrated"))
    reactions = load_reaction_data(root, skip_single=skip_single,
                                   max_seen_before_s=max_seen_before_s)[0] if wants_model else None
    rankings, invalid = _survey(root, reactions)
    present = set(rankings["participant"].astype(str))
    if reactions is not None:
        present |= set(reactions.participants)
    unknown = sorted(withdrawn - present)
    if unknown:
        logger.warning("%s: participant(s) %s to leave out are not in the study", root,
                       ", ".join(unknown))
    keep = sorted(present - withdrawn)
    rankings = rankings[rankings["participant"].astype(str).isin(keep)]
    if reactions is not None:
        reactions = reactions.subset([p for p in reactions.participants if p in keep])
    if not keep or (reactions is not None and not reactions.participants and
                    "ranking" not in sources):
        raise FergiError(f"{root}: no label to export (every participant is left out)")
    screened_out: list[str] = []
    if screen and reactions is not None:
        if (reactions.clips["clip"] == "baseline").any():
            screened_out = list(screen_participants(reactions.clips))
        else:
            logger.warning("%s: no baseline clips, AU4 screening skipped", root)
    images = None
    if format != "jsonl":
        folder = Path(images_dir) if images_dir is not None else root / "images"
        if not folder.is_dir():
            raise FergiError(f"{folder}: no images folder (the {format} format embeds the "
                             "images; give --images DIR)")
        images = ImageStore(folder)
    captions, generators, created = _session_facts(root)
    if not captions:
        logger.warning("%s: no study/prompts.csv; captions are empty", root)
    features = None
    if with_features and reactions is not None:
        table = image_table(reactions.images, reactions.clips, reactions.invalid)
        values = table[list(FEATURE_COLUMNS)].to_numpy(dtype=float)
        features = {(str(p), int(s), int(i)): values[k] for k, (p, s, i) in
                    enumerate(zip(table["participant"], table["session"], table["image"], strict=True))}
    plan = LabelPlan(sources, lopo, withdrawn=sorted(withdrawn & present),
                     consent=consent_status(root))
    chunks = iter_labels(reactions, model=model, sources=sources, lopo=lopo,
                         screened_out=screened_out, on_few_baselines=on_few_baselines, plan=plan,
                         rankings=rankings, invalid=invalid)
    if images is not None:
        chunks = _checked(chunks, images)
    settings = {"sources": list(sources), "lopo": lopo, "screen": screen, "all_pairs": all_pairs,
                "abstentions": abstentions, "min_confidence": min_confidence,
                "with_features": with_features, "shard_size": shard_size}
    summary_holder: dict = {}

    def card(summary: ExportSummary) -> str:
        summary.plan = plan
        summary.settings = settings
        summary_holder["s"] = summary
        return dataset_card(summary)

    summary = write_labels(chunks, out, format=format, images=images, salt=salt,
                           captions=captions, generators=generators, created=created,
                           features=features, all_pairs=all_pairs, abstentions=abstentions,
                           min_confidence=min_confidence, shard_size=shard_size,
                           overwrite=overwrite, protect=root, card=card, source_name=str(root),
                           sources=sources)
    summary.plan, summary.settings = plan, settings
    logger.info("exported %d labelled pairs to %s", summary.n_rows, summary.out)
    warning = tie_warning(summary)
    if warning:
        logger.warning("%s", warning)
    return summary


def _survey(root: Path, reactions) -> tuple[pd.DataFrame, set]:
    """The rankings of every surveyed image and the invalid images of a study folder."""
    if (root / "preparation" / "preprocessed_image_data").is_dir():
        images = load_images(root)
        # The study's participants are those with recordings under data/.
        recorded = {d.name for d in (root / "data").iterdir() if d.is_dir()}
        images = images[images["participant"].astype(str).isin(recorded)]
    elif reactions is not None:
        images = reactions.images
    else:
        raise FergiError(f"{root / 'preparation' / 'preprocessed_image_data'}: missing "
                         "(ranking labels need the participants' rankings)")
    return images, load_invalid_images(root)


def _checked(chunks: Iterable[pd.DataFrame], images: ImageStore) -> Iterator[pd.DataFrame]:
    """Fail on the first missing image before a shard with it is written."""
    for chunk in chunks:
        seen = set()
        for column in ("image_a", "image_b"):
            for key in zip(chunk["participant"].astype(str), chunk["session"].astype(int),
                           chunk[column].astype(int), strict=True):
                if key not in seen:
                    seen.add(key)
                    images.require(*key)
        yield chunk
