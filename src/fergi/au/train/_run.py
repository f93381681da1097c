"""``train_au``: the whole recipe behind ``fergi train-au``, with its run folder.

Run folder (default ``<out without suffix>_run/`` next to the model file)::

    config.json        the options of the run
    cache/             the preprocessing cache (fergi.au.train.build_cache)
    fold<k>/state.pt   resumable checkpoint of cross-validation fold k
    final/state.pt     resumable checkpoint of the model trained on every subject
    losses.csv         loss parts of every optimiser step (fold 0 = final model)
    epoch_losses.csv   their mean per fold and epoch
    eval.csv/.json     per-AU ICC(3,1), Pearson r and MAE of the cross-validation
    predictions.csv    the out-of-fold predictions behind them
    learning_curve.png the losses against epochs
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from fergi._errors import FergiError
from fergi.au.train._cache import FaceCache, build_cache
from fergi.au.train._config import TrainConfig
from fergi.au.train._datasets import read_datasets
from fergi.au.train._metrics import format_metrics
from fergi.au.train._model_file import save_model
from fergi.au.train._train import _distributed, cross_validate, train_model

logger = logging.getLogger(__name__)

# Options that change what a resumed checkpoint means; the others (epochs, device,
# workers, ...) may differ between a run and its resumption.
_RECIPE = (
    "batch_size",
    "lr_head",
    "lr_backbone",
    "weight_decay",
    "seed",
    "flip",
    "crop_scale",
    "crop_ratio",
    "width",
    "layers",
    "backbone",
    "mse_weights",
    "amp",
    "preprocessing",
)
# What a run folder written before an option existed was trained with.
_BEFORE = {"mse_weights": "paper-eq16", "amp": True, "preprocessing": "fergi"}


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _write_csv(path: Path, table: pd.DataFrame, **kw) -> None:
    tmp = path.with_name(path.name + ".tmp")
    table.to_csv(tmp, **kw)
    os.replace(tmp, path)


def _check_config(run_dir: Path, config: TrainConfig, extra: dict) -> None:
    path = run_dir / "config.json"
    new = {**config.to_dict(), **extra}
    if path.is_file():
        try:
            old = {**_BEFORE, **json.loads(path.read_text())}
        except ValueError as exc:
            raise FergiError(f"{path}: not valid JSON ({exc})") from exc
        changed = [
            k
            for k in _RECIPE
            if k in old and k in new
            and json.loads(json.dumps(old[k])) != json.loads(json.dumps(new[k], default=str))
        ]
        if changed:
            was = ", ".join(f"{k}={json.dumps(old[k])}" for k in changed)
            raise FergiError(
                f"{path}: this run folder was trained with other {', '.join(changed)} "
                f"({was}); use another --run-dir or delete it"
            )
    _write_json(path, new)


def _wait_for_cache(folder: Path, n_rows: int, poll_s: float = 5.0) -> FaceCache:
    """Other ranks wait for rank 0's cache by polling, not a collective barrier.

    Building the cache of the real datasets takes hours, far beyond the timeout of a
    process-group barrier.
    """
    import time

    while True:
        try:
            cache = FaceCache.open(folder)
            if len(cache.table) == n_rows and cache.summary()["pending"] == 0:
                return cache
        except (FergiError, OSError, ValueError):
            pass  # not written yet, or being replaced
        time.sleep(poll_s)


def plot_learning_curve(history: pd.DataFrame, path) -> Path:
    """Loss against epochs (per step, lightly smoothed), one line per fold/final model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4))
    for fold, h in history.groupby("fold"):
        if h.empty:
            continue
        per_epoch = h.groupby("epoch")["step"].transform(
            lambda s: np.arange(len(s)) / max(len(s), 1)
        )
        x = h["epoch"] - 1 + per_epoch
        y = h["loss"].rolling(max(1, len(h) // 50), min_periods=1).mean()
        ax.plot(x, y, label="final (all subjects)" if fold == 0 else f"CV fold {fold}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss E (eq. 11)")
    ax.set_title("fergi train-au: training loss")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def train_au(
    *,
    disfa=None,
    disfa_plus=None,
    out=None,
    run_dir=None,
    cache_dir=None,
    cv: int | None = None,
    final: bool = True,
    config: TrainConfig | None = None,
    workers: int = 1,
    progress: bool = True,
    prepare_only: bool = False,
    preprocessing: str = "authors",
    landmarks=None,
) -> dict:
    """Read DISFA/DISFA+, cache the faces, cross-validate and/or train the final model.

    Parameters
    ----------
    disfa, disfa_plus : str or path-like, optional
        Dataset folders (at least one).
    out : str or path-like, optional
        Model file written when ``final`` (a plain state_dict for
        ``create_au_estimator("ir50", checkpoint=out)``, recording how it was
        trained: :func:`~fergi.au.train.read_training_record`). Giving it with ``cv``
        but without ``final`` is an error (no model would be written).
    run_dir : str or path-like, optional
        Run folder (see the module docstring); default ``<out>_run`` next to ``out``.
    cache_dir : str or path-like, optional
        Preprocessing cache; default ``run_dir/cache``.
    cv : int, optional
        Folds of the subject-independent cross-validation (None: none).
    final : bool, default True
        Train the final model on every subject and write ``out``.
    config : TrainConfig, optional
    workers : int, default 1
        Processes building the cache.
    progress : bool, default True
    prepare_only : bool, default False
        Build the cache and stop (e.g. before a multi-GPU ``torchrun``).
    preprocessing : {"authors", "fergi"}, default "authors"
        How faces are cropped (:func:`build_cache`): the authors' own pipeline, as
        their published model was trained, or fergi's FaceMesh-based one. Use the same
        with ``fergi extract --preprocessing``.
    landmarks : str or path-like, optional
        MobileFaceNet weights of the ``authors`` preprocessing.

    Returns
    -------
    dict
        ``metrics`` (DataFrame or None), ``model`` (path or None), ``run_dir``,
        ``cache`` (summary counts).
    """
    config = config or TrainConfig()
    if final and out is None:
        raise FergiError("--out: give the model file to write")
    if out is not None and cv is not None and not final and not prepare_only:
        # Checked before any data is read: the cross-validation alone can run for days.
        raise FergiError(
            f"--out {out}: --cv {cv} alone writes no model; add --all to also train the "
            "final model on every subject (or leave out --out)"
        )
    if not final and cv is None and not prepare_only:
        raise FergiError("--cv/--all: nothing to do (give --cv K, --all, or both)")
    if run_dir is None:
        base = Path(out) if out is not None else Path("train_au")
        run_dir = base.with_name(base.stem + "_run")
    run_dir = Path(run_dir)
    if out is not None and Path(out).is_dir():
        raise FergiError(f"--out {out}: is a folder; give a model file such as model.pth")
    rank, world, _ = _distributed()
    lead = rank == 0
    table = read_datasets(disfa, disfa_plus)
    cache_dir = Path(cache_dir) if cache_dir is not None else run_dir / "cache"
    if lead:
        run_dir.mkdir(parents=True, exist_ok=True)
        _check_config(
            run_dir,
            config,
            {
                "disfa": disfa,
                "disfa_plus": disfa_plus,
                "out": out,
                "cv": cv,
                "final": final,
                "world_size": world,
                "preprocessing": preprocessing,
            },
        )
        cache = build_cache(table, cache_dir, workers=workers, progress=progress,
                            preprocessing=preprocessing, landmarks=landmarks)
    if not lead:
        cache = _wait_for_cache(cache_dir, len(table))
    summary = cache.summary()
    logger.info(
        "%d labelled frames: %d with a face, %d without, %d past the end of their video",
        summary["frames"],
        summary["faces"],
        summary["no_face"],
        summary["not_in_video"],
    )
    histories, metrics = [], None
    if prepare_only:
        return {"metrics": None, "model": None, "run_dir": run_dir, "cache": summary, "table": None}
    if cv is not None:
        metrics, predictions, hist = cross_validate(
            cache, config, n_folds=cv, run_dir=run_dir, progress=progress
        )
        histories += hist
        if lead:
            _write_csv(run_dir / "eval.csv", metrics.round(4), index_label="au")
            _write_json(
                run_dir / "eval.json",
                {
                    "folds": cv,
                    "metrics": {
                        au: {k: (None if not np.isfinite(v) else float(v)) for k, v in row.items()}
                        for au, row in metrics.iterrows()
                    },
                },
            )
            _write_csv(run_dir / "predictions.csv", predictions, index=False)
    model_path = None
    if final:
        model, hist = train_model(
            cache,
            cache.usable,
            config,
            state_path=run_dir / "final" / "state.pt",
            progress=progress,
            desc="final ",
        )
        hist.insert(0, "fold", 0)
        histories.append(hist)
        if lead:
            model_path = save_model(model, out)
            logger.info("wrote %s", model_path)
    if lead and histories:
        history = pd.concat(histories, ignore_index=True)
        _write_csv(run_dir / "losses.csv", history, index=False)
        per_epoch = (
            history.groupby(["fold", "epoch"])[["loss", "mse", "cos", "bce"]].mean().reset_index()
        )
        _write_csv(run_dir / "epoch_losses.csv", per_epoch, index=False)
        plot_learning_curve(history, run_dir / "learning_curve.png")
    return {
        "metrics": metrics,
        "model": model_path,
        "run_dir": run_dir,
        "cache": summary,
        "table": format_metrics(metrics) if metrics is not None else None,
    }
