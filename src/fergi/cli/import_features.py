"""``fergi import-features``: per-frame features from OpenFace, py-feat or LibreFace outputs."""

from __future__ import annotations

import argparse
import re
import sys

DESCRIPTION = """\
Turn the per-frame output of an AU tool you already run into fergi's per-frame
features (the FERGI release's schema), so that `fergi annotate`, `fit`, `reproduce`
and `export-labels` run on it unchanged.

--from openface   OpenFace 2.x FeatureExtraction CSVs (AU01_r ... intensities,
                  confidence/success, 68 landmarks x_0..y_67, timestamp)
--from pyfeat     py-feat Fex CSVs (AU01 ... probabilities, FaceScore, 68 landmarks;
                  needs --fps: py-feat writes frame numbers, not timestamps)
--from libreface  LibreFace video CSVs (au_1_intensity ..., frame_time_in_ms, 478
                  FaceMesh landmarks; needs --frame-size: they are fractions of it)

SRC is a folder of outputs named after the clips, in the release layout:
SRC/<participant>/session_<s>/baseline_clip_<i>.csv and reaction_clip_<i>.csv
(optionally under SRC/data/). Other names: --mapping FILE, a CSV with columns
file,participant,session,image,clip (and optionally fps,width,height per file).
SRC/preparation/ (survey answers and rankings, as in the release) is copied to DIR.

The pitch and yaw ratios of the paper's frame filter are computed from the tool's
landmarks (68 points in the authors' oriented face frame; FaceMesh points as the
geometry estimator does); a file without landmarks falls back to the tool's head-pose
angles. Several faces in a frame: the largest is kept. An AU the tool lacks is left
empty and named; models that read it are refused. DIR/features_meta.json records the
tool, its AU scale, how the ratios were made and each source file's SHA-256; the
labels then need a scale-free model (the default of `fergi annotate`).

A file with a missing column, timestamps that do not increase, a frame rate far from
--fps, or AU values outside the tool's range is reported (file, row, column) and
skipped; the exit status is then 1.

Example:
  fergi import-features openface_out/ --from openface --out study/
  fergi annotate --data study/ --out labels.jsonl
  fergi reproduce --data study/ --out results/
"""


def _frame_size(text: str) -> tuple[float, float]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) == 0 or int(m.group(2)) == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT in pixels, e.g. 1280x720")
    return float(m.group(1)), float(m.group(2))


def _fps(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be positive")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "import-features",
        help="per-frame features from OpenFace, py-feat or LibreFace outputs",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", metavar="SRC", help="folder of the tool's CSVs (named after the clips)")
    parser.add_argument("--from", dest="source", required=True, choices=("openface", "pyfeat", "libreface"),
                        help="the tool that wrote SRC")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (release layout)")
    parser.add_argument("--mapping", metavar="FILE",
                        help="CSV file,participant,session,image,clip[,fps,width,height] for other names")
    parser.add_argument("--fps", type=_fps, metavar="N",
                        help="the clips' frame rate (py-feat needs it; checked against the others' "
                             "timestamps)")
    parser.add_argument("--frame-size", type=_frame_size, metavar="WxH",
                        help="the videos' frame size in pixels (LibreFace landmarks are fractions of it)")
    parser.add_argument("--estimator-version", metavar="V",
                        help="the tool's version, recorded in features_meta.json")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a DIR that holds features of another estimator")
    return parser


def run(args: argparse.Namespace) -> int:
    # deferred: pandas and pyarrow (the library); `fergi --help` loads none of it
    from fergi.au import import_feature_folder

    summary = import_feature_folder(
        args.src, args.source, args.out, mapping=args.mapping, fps=args.fps,
        frame_size=args.frame_size, estimator_version=args.estimator_version,
        overwrite=args.overwrite,
    )
    for _path, message in summary.failed:
        print(f"error: {message}", file=sys.stderr)
    missing = f"; no {', '.join(summary.missing_aus)} (left empty)" if summary.missing_aus else ""
    print(f"Imported {len(summary.written)} clip(s) from {args.source} into {summary.out} "
          f"({summary.au_scale}; ratios from {', '.join(summary.pose_ratios)}{missing})"
          + (f"; {len(summary.failed)} file(s) failed" if summary.failed else ""))
    print(f"Wrote {summary.meta}")
    return 1 if summary.failed else 0
