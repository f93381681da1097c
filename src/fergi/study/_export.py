"""Write a collected study in the layout of the public FERGI release.

The output runs through ``fergi.datasets.load_frames`` / ``load_images`` and so through
``fergi reproduce``, ``fergi fit`` and ``fergi annotate`` unchanged::

    data/<participant>/session_<s>/{baseline,reaction}_clip_<i>_features.csv
    data/<participant>/session_<s>/features_meta.json      which AU estimator made them
    preparation/valid_sessions.json
    preparation/invalid_images.json                          all-black images, and images
                                                             with an invalid clip (below)
    preparation/preprocessed_image_data/<participant>.csv
    study/{sessions,prompts,images,answers,labels}.csv     what the release does not hold
    study/clips.csv                                          every clip's frame count, validity,
                                                             the reason it is invalid, and its
                                                             presentation's exposure (1: the
                                                             first showing) and seen_before_s
    study/presentations.csv                                  every showing of every image: its
                                                             start, end, why it ended and the
                                                             seconds the image was visible
    images/<participant>/session_<s>/image_<i>.png           the generated images
    raw/<participant>/session_<s>/{baseline,reaction}_clip_<i>.<ext>
                                                             face videos, only of sessions
                                                             whose participant allowed sharing

A clip the camera stopped in (fewer frames than ``clip_min_frame_share`` of its window)
or froze in cannot be read as invalid from its per-frame file, so it is marked the way
the release marks images that must not be labelled: its image is listed in
``invalid_images.json`` (``fergi annotate``, ``fit`` and ``reproduce`` skip it), and its
own feature file is left out (a few frames of a baseline must not enter participant
screening or normalisation). An image whose stored clips come from a presentation that
a later replay superseded is listed there too.

A replay (the image shown again after an interruption) is not a first impression: its
clips carry ``exposure`` > 1 and the seconds the image was seen before. They are
exported as they are; ``fergi annotate``, ``fit``, ``reproduce`` and ``export-labels``
leave them out when ``seen_before_s`` exceeds their ``--max-seen-before`` (0.5 s).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import make_url

from fergi._atomic import stage_folder, swap_in
from fergi._errors import FergiError
from fergi.datasets import META_NAME, write_features_meta
from fergi.schema import EMOTIONS, IMAGE_COLUMNS, ISSUES, SCORE_COLUMNS
from fergi.study._settings import StudySettings
from fergi.study.processing import clip_video, has_recording_fault, session_features_provenance
from fergi.study.protocol import DEFAULT_CLIP_MIN_FRAME_SHARE, stale_images
from fergi.study.store import (
    MediaStore,
    StudySession,
    check_media_key,
    is_url,
    make_engine,
    make_sessionmaker,
    open_store,
    presentation_attempts,
    sqlite_file,
)

logger = logging.getLogger(__name__)


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check_out_is_safe(out: Path, db_url: str, media: Path | None) -> None:
    """Refuse an output folder whose replacement would delete the study's own data
    (``media`` None: the media are on object storage)."""
    target = out.resolve()
    protected = [("media folder", media.resolve())] if media is not None else []
    db_file = sqlite_file(db_url)
    if db_file is not None:
        protected.append(("database folder", db_file.parent))
    for what, folder in protected:
        if _is_within(target, folder) or _is_within(folder, target):
            raise FergiError(
                f"--out {out}: overlaps the study's {what} {folder}; choose a folder outside the study data"
            )


def _open_db(db_url: str):
    url = make_url(db_url) if "://" in db_url else None
    if url is None:
        # A bare path is taken as an SQLite file, the default of `fergi serve`.
        path = Path(db_url).expanduser()
        if not path.is_file():
            raise FergiError(f"--db {db_url}: no such database file")
        return make_engine(f"sqlite:///{path.resolve()}")
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database not in ("", ":memory:") and not Path(database).expanduser().is_file():
            raise FergiError(f"--db {db_url}: no such database file")
    return make_engine(db_url)


def _session_is_valid(sess: StudySession) -> tuple[bool, str]:
    if sess.ranking is None:
        return False, "not finished (no ranking)"
    if len(sess.answers) < sess.n_images:
        return False, f"{len(sess.answers)} of {sess.n_images} images annotated"
    have = {(c.image_index, c.clip) for c in sess.clips if c.features_file}
    need = {(i, k) for i in range(1, sess.n_images + 1) for k in ("baseline", "reaction")}
    if not need <= have:
        return False, "not processed (features missing)"
    return True, ""


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def image_rows(sess: StudySession) -> list[list[Any]]:
    """Rows of ``preprocessed_image_data`` for one session, in the release's columns."""
    order = list(sess.ranking.order) if sess.ranking is not None else []
    n = len(order)
    # Baseline scores the worker's score stage stored (fergi.scorers); blank otherwise.
    scores = {img.index: (img.meta or {}).get("scores", {}) for img in sess.images}
    rows = []
    for answer in sess.answers:
        # rank_score = n_images - position (0-based): the best image gets n_images.
        rank = n - order.index(answer.image_index) if answer.image_index in order else ""
        row = {
            "session_index": sess.index,
            "image_index": answer.image_index,
            "overall_rating": answer.overall_rating,
            "alignment_rating": answer.alignment_rating,
            "fidelity_rating": answer.fidelity_rating,
            **{k: k in answer.issues for k in ISSUES},
            **{k: k in answer.emotions for k in EMOTIONS},
            "rank_score": rank,
            **{c: scores.get(answer.image_index, {}).get(c, "") for c in SCORE_COLUMNS},
        }
        rows.append([row[c] for c in IMAGE_COLUMNS])
    return rows


def export_study(
    db_url: str,
    media_dir: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    include_raw: bool = True,
    estimator: str | None = None,
    clip_min_frame_share: float | None = None,
) -> dict[str, Any]:
    """Export the finished, processed sessions of a study in the public release's layout.

    Parameters
    ----------
    db_url : str
        The study database (SQLAlchemy URL, or the path of the SQLite file).
    media_dir : str or Path
        The study's media folder (``fergi serve --media``), or its object-store URL
        (``s3://bucket/prefix``). Encrypted raw video is read with ``FERGI_MEDIA_KEY``.
    out : str or Path
        Output folder; it must not exist or be empty unless ``overwrite``.
    overwrite : bool
        Replace an existing non-empty output folder.
    include_raw : bool
        Copy the face-video clips of sessions whose participant allowed sharing.
    estimator : str, optional
        The AU estimator that processed sessions whose features folder has no
        ``features_meta.json`` (processed by an older fergi); default the study
        settings' (``FERGI_ESTIMATOR``, else ``geometry``). Each exported session
        folder gets a ``features_meta.json``: the session's own, else one for this.
    clip_min_frame_share : float, optional
        The frame-count rule of clip validity (default the study settings',
        ``FERGI_CLIP_MIN_FRAME_SHARE``, else ``DEFAULT_CLIP_MIN_FRAME_SHARE``, 0.8): images with a clip under it (or
        one the camera froze in) are listed in ``invalid_images.json`` and that clip's
        features are not exported.

    Returns
    -------
    dict
        Summary: ``participants``, ``sessions``, ``images``, ``skipped`` (session ->
        reason), ``raw_clips``, ``invalid_clips`` (``"<p>/session_<s>/<clip>_clip_<i>"``
        -> reason), ``out``.

    Raises
    ------
    fergi.FergiError
        Missing database or media folder, non-empty output folder, or an output
        folder that is, contains or lies inside the database's or media folder.
    """

    engine = _open_db(db_url)
    key = os.environ.get("FERGI_MEDIA_KEY", "").strip() or None
    remote = is_url(media_dir)
    media = media_dir if remote else Path(media_dir).expanduser()
    if not remote and not media.is_dir():
        engine.dispose()
        raise FergiError(f"--media {media}: no such folder")
    try:
        store = open_store(media_dir, key=key) if remote else MediaStore(media, key=key)
        check_media_key(store, write=False)
    except FergiError:
        engine.dispose()
        raise
    final = Path(out).expanduser()
    try:
        _check_out_is_safe(final, db_url, None if remote else media)
        # Owner-only from the start (face videos, answers): nobody else can enter it
        # while it is written, whatever the umask.
        out = stage_folder(final, overwrite=overwrite, mode=0o700)
    except OSError as exc:
        engine.dispose()
        raise FergiError(f"--out {final}: cannot write there ({exc.strerror or exc})") from None
    except FergiError:
        engine.dispose()
        raise
    if estimator is None or clip_min_frame_share is None:
        defaults = StudySettings()
        estimator = defaults.estimator if estimator is None else estimator
        if clip_min_frame_share is None:
            clip_min_frame_share = defaults.clip_min_frame_share
    try:
        summary = _export_into(engine, store, out, include_raw, estimator, clip_min_frame_share)
        _owner_only(out)
        swap_in(out, final)
    except OSError as exc:
        shutil.rmtree(out, ignore_errors=True)
        raise FergiError(f"--out {final}: export failed, previous export kept ({exc})") from None
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    summary["out"] = str(final)
    logger.info(
        "exported %d session(s) of %d participant(s) to %s (%d skipped)",
        summary["sessions"], summary["participants"], final, len(summary["skipped"]),
    )
    return summary


def _owner_only(tree: Path) -> None:
    """Files 0600 and folders 0700 under ``tree``, as the study folder is, whatever the
    umask the export ran under (links are not followed)."""
    for folder, _dirs, files in os.walk(tree):  # symbolic links to folders are not entered
        os.chmod(folder, 0o700)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o600)


def _export_into(
    engine,
    store: MediaStore,
    out: Path,
    include_raw: bool,
    estimator: str,
    min_frame_share: float = DEFAULT_CLIP_MIN_FRAME_SHARE,
) -> dict[str, Any]:

    defaults = StudySettings()

    media = store.location
    factory = make_sessionmaker(engine)
    summary: dict[str, Any] = {
        "participants": 0, "sessions": 0, "images": 0, "raw_clips": 0, "skipped": {}, "invalid_clips": {},
    }
    valid_sessions: dict[str, list[int]] = {}
    invalid_images: dict[str, dict[str, list[int]]] = {}
    tables: dict[str, list[list[Any]]] = {
        k: [] for k in ("sessions", "prompts", "images", "answers", "labels", "clips", "presentations")
    }
    try:
        with factory() as db:
            sessions = db.scalars(
                select(StudySession).order_by(StudySession.participant_id, StudySession.index)
            ).all()
            image_data: dict[str, list[list[Any]]] = {}
            for sess in sessions:
                pid, s = sess.participant_id, sess.index
                ok, reason = _session_is_valid(sess)
                tables["sessions"].append(
                    [pid, s, sess.session_type, sess.consent_version, sess.consent_at, sess.share_video,
                     sess.created_at, sess.finished_at, ok, reason]
                )
                if not ok:
                    summary["skipped"][f"{pid}/session_{s}"] = reason
                    continue
                session_dir = out / "data" / pid / f"session_{s}"
                session_dir.mkdir(parents=True, exist_ok=True)
                superseded = set(stale_images(sess))
                short = {(c.image_index, c.clip) for c in sess.clips if has_recording_fault(c, min_frame_share)}
                left_out = {image for image, _ in short} | superseded
                for clip in sorted(sess.clips, key=lambda c: (c.image_index, c.clip)):
                    reason = clip.invalid_reason
                    if clip.image_index in superseded:
                        reason = "superseded by a later presentation that holds no clip"
                    exported = (clip.image_index, clip.clip) not in short
                    tables["clips"].append(
                        [pid, s, clip.image_index, clip.clip, clip.n_frames,
                         "" if clip.expected_frames is None else clip.expected_frames,
                         "" if clip.valid_frame_share is None else clip.valid_frame_share,
                         "" if clip.clip_valid is None else clip.clip_valid, reason or "", exported,
                         "" if clip.exposure is None else clip.exposure,
                         "" if clip.seen_before_s is None else clip.seen_before_s]
                    )
                    if reason and (clip.image_index in left_out):
                        summary["invalid_clips"][f"{pid}/session_{s}/{clip.clip}_clip_{clip.image_index}"] = reason
                    if not exported:
                        continue
                    source = store.resolve(clip.features_file)
                    if not source.is_file():
                        raise FergiError(f"--media {media}: missing feature file {clip.features_file}")
                    store.copy_to(source, session_dir / f"{clip.clip}_clip_{clip.image_index}_features.csv")
                    if include_raw and sess.share_video:
                        # encoded from the raw upload now, unless an admin already watched it
                        try:
                            video = clip_video(db, sess, store, clip.image_index, clip.clip)
                        except FergiError as exc:
                            # An unreadable raw upload costs its clip videos, never the
                            # export: the features are already copied.
                            logger.warning("%s/session_%s: clip video not exported (%s)", pid, s, exc)
                            summary.setdefault("raw_clips_failed", []).append(
                                f"{pid}/session_{s}/{clip.clip}_clip_{clip.image_index}")
                            continue
                        if video is not None and video.is_file():
                            target = out / "raw" / pid / f"session_{s}" / f"{clip.clip}_clip_{clip.image_index}{video.suffix}"
                            target.parent.mkdir(parents=True, exist_ok=True)
                            store.copy_to(video, target)
                            summary["raw_clips"] += 1
                # The release's CSV schema has no room for provenance: the meta file
                # tells downstream models which AU scale these files are on.
                meta = store.features_dir(sess.id) / META_NAME
                if meta.is_file():
                    store.copy_to(meta, session_dir / META_NAME)
                else:
                    write_features_meta(session_dir, session_features_provenance(estimator))
                valid_sessions.setdefault(pid, []).append(s)
                invalid_images.setdefault(pid, {})[str(s)] = sorted(
                    {i.index for i in sess.images if i.invalid} | left_out
                )
                image_data.setdefault(pid, []).extend(image_rows(sess))
                summary["sessions"] += 1
                summary["images"] += sess.n_images
                for a in presentation_attempts(
                    sess, present_s=defaults.present_s, chunk_s=defaults.chunk_ms / 1000
                ):
                    d = a.as_dict()
                    tables["presentations"].append(
                        [pid, s, a.image, a.exposure, a.segment, d["shown_at"] or "", d["ended_at"] or "",
                         a.end_reason or "", d["visible_s"], a.visible_estimated, d["seen_before_s"]]
                    )
                tables["prompts"].append(
                    [pid, s, sess.session_type, sess.prompt, sess.generator,
                     json.dumps(sess.structured_input) if sess.structured_input else "",
                     json.dumps(sess.generated_prompts or [])]
                )
                for img in sess.images:
                    source = store.image_path(sess.id, img.index)
                    if source.is_file():
                        target = out / "images" / pid / f"session_{s}" / f"image_{img.index}.png"
                        target.parent.mkdir(parents=True, exist_ok=True)
                        store.copy_to(source, target)
                    tables["images"].append([pid, s, img.index, img.seed, img.invalid, json.dumps(img.meta)])
                for a in sess.answers:
                    tables["answers"].append(
                        [pid, s, a.image_index, a.missing_elements, a.overall_rating, a.alignment_rating,
                         a.fidelity_rating, ";".join(a.issues), ";".join(a.emotions)]
                    )
                for lab in sorted(sess.labels, key=lambda x: (x.image_a, x.image_b)):
                    tables["labels"].append(
                        [pid, s, lab.image_a, lab.image_b, "" if lab.preferred is None else lab.preferred,
                         lab.score_difference, lab.confident]
                    )
    finally:
        engine.dispose()

    prep = out / "preparation"
    (prep / "preprocessed_image_data").mkdir(parents=True, exist_ok=True)
    (prep / "valid_sessions.json").write_text(json.dumps(valid_sessions, indent=4))
    (prep / "invalid_images.json").write_text(json.dumps(invalid_images, indent=4))
    for pid, rows in image_data.items():
        _write_csv(prep / "preprocessed_image_data" / f"{pid}.csv", list(IMAGE_COLUMNS), rows)
    headers = {
        "sessions": ["participant", "session", "session_type", "consent_version", "consent_at",
                     "share_video", "created_at", "finished_at", "exported", "reason"],
        "prompts": ["participant", "session", "session_type", "prompt", "generator",
                    "structured_input", "generated_prompts"],
        "images": ["participant", "session", "image", "seed", "invalid", "meta"],
        "answers": ["participant", "session", "image", "missing_elements", "overall_rating",
                    "alignment_rating", "fidelity_rating", "issues", "emotions"],
        "labels": ["participant", "session", "image_a", "image_b", "preferred",
                   "score_difference", "confident"],
        "clips": ["participant", "session", "image", "clip", "n_frames", "expected_frames",
                  "valid_frame_share", "clip_valid", "invalid_reason", "exported", "exposure",
                  "seen_before_s"],
        "presentations": ["participant", "session", "image", "exposure", "segment", "shown_at", "ended_at",
                          "end_reason", "visible_s", "visible_estimated", "seen_before_s"],
    }
    for name, rows in tables.items():
        _write_csv(out / "study" / f"{name}.csv", headers[name], rows)
    summary["participants"] = len(valid_sessions)
    return summary
