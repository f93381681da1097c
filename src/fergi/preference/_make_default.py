"""Regenerate the shipped default model: ``python -m fergi.preference._make_default [--data PATH]``.

Fits :class:`AUcombValence` (published grids, eq. 5) on every pair of the participants that
pass the AU4 screening of the public release (30 of 33) and writes
``fergi/preference/models/aucomb_fergi30.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fergi.preference._io import default_model_path, save_model


def release_table(path):
    """Image table and screened-out participants of a release folder (fergi loaders)."""
    from fergi.datasets import load_frames, load_images, load_invalid_images
    from fergi.features import compute_activation_values, image_table, screen_participants

    clips = compute_activation_values(load_frames(path))
    table = image_table(load_images(path), clips, load_invalid_images(path))
    return table, screen_participants(clips)


def make_default(data, out: Path | None = None) -> Path:
    """Fit the default AUcomb model on the screened participants of ``data`` and save it."""
    from fergi.datasets import fetch_fergi
    from fergi.preference._aucomb import AUcombValence

    root = fetch_fergi(data, download=data is None)
    table, excluded = release_table(root)
    table = table[~table["participant"].isin(excluded)]
    model = AUcombValence().fit(table)
    metadata = {
        "description": "AUcomb valence model fitted on all pairs of the 30 participants of the "
                       "public FERGI release that pass the AU4 screening",
        "excluded_participants": sorted(excluded),
        "n_participants": int(table["participant"].nunique()),
        "n_training_pairs": model.n_pairs_,
        "training_selected_pairs": model.n_correct_ + model.n_incorrect_,
        "training_accuracy_selected": round(100 * model.n_correct_ / max(1, model.n_correct_ + model.n_incorrect_), 2),
        "activation_scale": "AU activation values of the release's IR-50 AU model (DISFA 0-5 scale)",
    }
    return save_model(model, out or default_model_path(), metadata=metadata)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="release folder (default: fetch/cached public release)")
    parser.add_argument("--out", type=Path, help="output file (default: the packaged model)")
    args = parser.parse_args(argv)
    print(make_default(args.data, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
