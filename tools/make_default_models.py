"""Regenerate the shipped models: ``python tools/make_default_models.py [--data PATH] [--out DIR]``.

A maintainer's script (not part of the installed package): it writes into
``src/fergi/preference/models/`` by default, and needs fergi importable (the project's
venv, or ``PYTHONPATH=src``).

Both are fitted on every pair of the 30 participants of the public release that pass the
AU4 screening, with the published grids:

``aucomb_baseline_fergi30.json`` (the default)
    AUcomb on activation values in baseline units (divided by each participant's median
    baseline activation), a quantile-mapped AUcomb as the fallback for participants with
    too few baseline clips, and the integration with the ImageReward / PickScore / HPS v2
    ensemble (eq. 10). Scale-free: valid for any AU estimator.
``aucomb_raw_fergi30.json``
    The paper's AUcomb on raw IR-50 activation values (eq. 5), with the integration.
    Valid only on features of the release's scale (``ir50-fergi``).

The metadata of each records its strict leave-one-participant-out figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fergi.datasets import fetch_fergi
from fergi.preference import (
    DEFAULT_MODEL,
    RAW_MODEL,
    AnnotationModel,
    default_model_path,
    default_valence,
    evaluate_lopo,
    load_reaction_data,
    save_model,
)


def make_models(data, out_dir: Path | None = None, *, evaluate: bool = True) -> list[Path]:
    """Fit the shipped models on the screened participants of ``data`` and save them."""
    root = fetch_fergi(data, download=data is None)
    data, excluded = load_reaction_data(root, screen=True, need_rankings=True)
    data = data.subset([p for p in data.participants if p not in excluded])
    written = []
    for name, normalization in ((DEFAULT_MODEL, "baseline_median"), (RAW_MODEL, "none")):
        model = AnnotationModel(default_valence("aucomb", normalization), normalization)
        metadata = {
            "description": "AUcomb valence model fitted on all pairs of the 30 participants of "
                           "the public FERGI release that pass the AU4 screening",
            "excluded_participants": sorted(excluded),
            "n_participants": len(data.participants),
        }
        if evaluate:
            result = evaluate_lopo(model, data)
            metadata["strict_lopo"] = {
                key: result[key] for key in ("n_pairs", "selective", "independent", "integrated",
                                             "integrated_selective", "at_coverage") if key in result}
        model.fit(data)
        target = (out_dir / name) if out_dir is not None else default_model_path(name)
        written.append(save_model(model, target, metadata=metadata))
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="release folder (default: fetch/cached public release)")
    parser.add_argument("--out", type=Path, help="output folder (default: the packaged models)")
    args = parser.parse_args(argv)
    for path in make_models(args.data, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
