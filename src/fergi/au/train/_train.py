"""Training loop of the FERGI AU model (Supp. B.3), with resumable checkpoints.

One process trains on CPU or one GPU; under ``torchrun`` each process drives one
GPU with DistributedDataParallel and a DistributedSampler, and rank 0 alone writes
checkpoints and logs. Batches are drawn from the preprocessing cache
(:class:`~fergi.au.train.FaceCache`): training never decodes video.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from fergi._errors import FergiError
from fergi.au._ir50 import N_AU_SLOTS
from fergi.au.train._config import TrainConfig
from fergi.au.train._datasets import subject_groups
from fergi.au.train._loss import (
    MSE_WEIGHTS,
    au_loss,
    bce_weights,
    class_counts,
    expand_weights,
    mse_weights,
)
from fergi.au.train._metrics import au_metrics
from fergi.au.train._model_file import (
    _atomic_torch_save,
    make_model,
    precision_of,
    predict,
    training_record,
)
from fergi.face import FACE_SIZE
from fergi.schema import AU_NAMES

logger = logging.getLogger(__name__)


#: Test hook: the process kills itself (SIGKILL) after this many optimiser steps.
KILL_ENV = "FERGI_TRAIN_AU_KILL_AFTER_STEPS"
_AU_NUMBERS = tuple(int(n[2:]) for n in AU_NAMES)


def _distributed() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)``; initialises the process group under torchrun."""
    import torch
    import torch.distributed as dist

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, 0
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))


@contextlib.contextmanager
def _fp32_maths(active: bool):
    """IEEE fp32 convolutions and matmuls on CUDA while active (TF32 off), then restored.

    torch lets cuDNN use TF32 by default on Ampere and later GPUs; "fp32" is meant
    as the authors had it on a GTX 1080 Ti, which has no TF32.
    """
    import torch

    if not active:
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def resolve_device(device: str | None, local_rank: int = 0):
    """The torch device of this process (``cuda:LOCAL_RANK`` under torchrun)."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise FergiError(f"--device {device}: CUDA is not available on this machine")
        if device == "cuda":
            device = f"cuda:{local_rank}"
        torch.cuda.set_device(torch.device(device))
    return torch.device(device)


def augment(x, generator, *, flip=True, scale=(0.9, 1.0), ratio=(19 / 20, 20 / 19)):
    """Random resized crop (area share ``scale``, aspect ``ratio``) and horizontal flip.

    The crop is resampled back to the input size by one batched affine warp (bilinear),
    so the same code runs on CPU and GPU. Random numbers come from ``generator`` (a
    CPU ``torch.Generator``): a batch's augmentation depends only on its seed.

    The authors use torchvision's ``RandomHorizontalFlip`` and ``RandomResizedCrop``
    on PIL images: the same distributions of area and log-aspect, but their crop
    has whole-pixel sides and position and redraws a box wider than the image (up to
    10 times), where this one is continuous and clamps such a box to the image. The
    crops are alike, not the same pixels.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, 3, H, W)`` float images.
    """
    import torch
    import torch.nn.functional as F

    b = x.shape[0]
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=generator)
    log_r = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    r = log_r.exp()
    w = (area * r).sqrt().clamp(max=1.0)
    h = (area / r).sqrt().clamp(max=1.0)
    cx = (1 - w) * torch.rand(b, generator=generator) + w / 2
    cy = (1 - h) * torch.rand(b, generator=generator) + h / 2
    sign = torch.ones(b)
    if flip:
        sign = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = w * sign
    theta[:, 0, 2] = 2 * cx - 1
    theta[:, 1, 1] = h
    theta[:, 1, 2] = 2 * cy - 1
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _targets(labels: np.ndarray) -> np.ndarray:
    """``(N, 64)`` targets by AU slot, NaN in the 52 unlabelled slots."""
    out = np.full((len(labels), N_AU_SLOTS), np.nan, dtype=np.float32)
    for k, au in enumerate(_AU_NUMBERS):
        out[:, au - 1] = labels[:, k]
    return out


class _CacheDataset:
    """Items ``(uint8 face HWC, target)`` of cache rows; opens the memmap lazily per worker."""

    def __init__(self, folder, n_rows, rows, targets):
        self.folder, self.n_rows, self.rows, self.targets = str(folder), n_rows, rows, targets
        self._faces = None

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        import torch

        if self._faces is None:
            self._faces = np.memmap(
                Path(self.folder) / "faces.u8",
                dtype=np.uint8,
                mode="r",
                shape=(self.n_rows, FACE_SIZE, FACE_SIZE, 3),
            )
        return torch.from_numpy(np.array(self._faces[self.rows[i]])), torch.from_numpy(
            self.targets[i]
        )


def train_model(
    cache,
    rows,
    config: TrainConfig,
    *,
    state_path=None,
    progress: bool = True,
    labels: np.ndarray | None = None,
    desc: str = "",
):
    """Train an AU model on cache rows, resuming from ``state_path`` if it exists.

    Parameters
    ----------
    cache : FaceCache
    rows : array-like of int
        Cache rows to train on (faces only; see ``FaceCache.usable``).
    config : TrainConfig
    state_path : str or path-like, optional
        Resumable checkpoint (model, optimiser, epoch, step, losses), rewritten
        atomically after every epoch (and every ``config.save_every`` steps). When it
        exists the run continues from it.
    progress : bool, default True
        A progress bar per epoch on stderr (rank 0).
    labels : numpy.ndarray, optional
        ``(len(rows), 12)`` labels overriding the cache's (e.g. shuffled, for a control).
    desc : str
        Prefix of the progress bars.

    Returns
    -------
    model : torch.nn.Module
        The trained model (unwrapped), in eval mode, on the training device.
    history : pandas.DataFrame
        One row per optimiser step: ``epoch``, ``step``, ``loss``, ``mse``, ``cos``, ``bce``.
    """
    import torch
    from torch.utils.data import DataLoader, DistributedSampler
    from tqdm.auto import tqdm

    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) < 2:
        raise FergiError(f"{cache.folder}: fewer than 2 training frames with a face")
    rank, world, local_rank = _distributed()
    device = resolve_device(config.device, local_rank)
    cuda = device.type == "cuda"
    if config.mse_weights not in MSE_WEIGHTS:
        raise FergiError(
            f"--mse-weights {config.mse_weights}: unknown (choose from {', '.join(MSE_WEIGHTS)})"
        )
    y = cache.labels(rows) if labels is None else np.asarray(labels, dtype=np.float32)
    # As the authors' compute_frequency: counted once over the whole training set.
    counts = class_counts(y)
    w_mse = torch.from_numpy(
        expand_weights(mse_weights(counts, config.mse_weights), _AU_NUMBERS)
    ).to(device)
    w_bce = torch.from_numpy(expand_weights(bce_weights(counts), _AU_NUMBERS)).to(device)
    dataset = _CacheDataset(cache.folder, len(cache.table), rows, _targets(y))

    model = make_model(config).to(device)
    if cuda and config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    head = [p for n, p in model.named_parameters() if n.startswith(("fc.", "features."))]
    body = [p for n, p in model.named_parameters() if not n.startswith(("fc.", "features."))]
    optimizer = torch.optim.Adam(
        [{"params": head, "lr": config.lr_head}, {"params": body, "lr": config.lr_backbone}],
        weight_decay=config.weight_decay,
    )
    precision = precision_of(config, device)
    if config.amp and precision == "fp32":
        logger.warning("--amp: no mixed precision on %s; training in fp32", device.type)
    amp = precision != "fp32"
    amp_dtype = torch.float16 if precision == "amp-fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "amp-fp16")

    epoch, step_in_epoch, history = 0, 0, []
    state_path = Path(state_path) if state_path is not None else None
    if state_path is not None and state_path.is_file():
        try:
            state = torch.load(str(state_path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise FergiError(
                f"{state_path}: unreadable training checkpoint ({type(exc).__name__}); delete it to restart"
            ) from exc
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        epoch, step_in_epoch, history = (
            int(state["epoch"]),
            int(state["step"]),
            list(state["history"]),
        )
        if rank == 0:
            logger.info("%s: resuming at epoch %d, step %d", state_path, epoch + 1, step_in_epoch)

    net = model
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if cuda else None
        )
        if rank == 0:
            logger.info(
                "DistributedDataParallel on %d process(es), backend %s",
                world,
                torch.distributed.get_backend(),
            )

    def save(ep, st):
        if rank != 0 or state_path is None:
            return
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": ep,
            "step": st,
            "history": history,
        }
        if scaler.is_enabled():
            state["scaler"] = scaler.state_dict()
        state_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_torch_save(state, state_path)

    kill_after = int(os.environ.get(KILL_ENV, "0") or 0)
    total_steps = len(history)
    sampler = DistributedSampler(
        range(len(rows)), num_replicas=world, rank=rank, shuffle=True, seed=config.seed
    )
    with _fp32_maths(cuda and not amp):
        net.train()
        stop = False
        while epoch < config.epochs and not stop:
            sampler.set_epoch(epoch)
            order = list(sampler)
            # Every sample, a short last batch included, as the authors' DataLoader
            # (shuffle=True, no drop_last): BatchNorm still sees 7x7 values a channel
            # in a batch of 1, as the model has no BatchNorm1d head in training.
            batches = [
                order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)
            ]
            loader = DataLoader(
                dataset,
                batch_sampler=batches[step_in_epoch:],
                num_workers=config.num_workers,
                pin_memory=cuda,
                persistent_workers=False,
            )
            bar = tqdm(
                total=len(batches),
                initial=step_in_epoch,
                desc=f"{desc}epoch {epoch + 1}/{config.epochs}",
                unit="batch",
                file=sys.stderr,
                disable=not progress or rank != 0,
            )
            for faces, target in loader:
                gen = torch.Generator().manual_seed(
                    config.seed * 1_000_003 + epoch * 100_003 + step_in_epoch * 101 + rank
                )
                x = faces.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
                x = augment(
                    x, gen, flip=config.flip, scale=config.crop_scale, ratio=config.crop_ratio
                )
                if cuda and config.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                target = target.to(device, non_blocking=True)
                with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp):
                    out = net(x)
                parts = au_loss(out.float(), target, w_mse, w_bce)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(parts["loss"]).backward()
                scaler.step(optimizer)
                scaler.update()
                step_in_epoch += 1
                total_steps += 1
                history.append(
                    {
                        "epoch": epoch + 1,
                        "step": total_steps,
                        **{k: float(v.detach()) for k, v in parts.items()},
                    }
                )
                bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
                bar.update(1)
                if (
                    config.save_every
                    and step_in_epoch % config.save_every == 0
                    and step_in_epoch < len(batches)
                ):
                    save(epoch, step_in_epoch)
                if kill_after and total_steps >= kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
                if config.max_steps is not None and total_steps >= config.max_steps:
                    stop = True
                    break
            bar.close()
            if not stop:
                epoch, step_in_epoch = epoch + 1, 0
            save(epoch, step_in_epoch)
    model.eval()
    model.fergi_training_ = training_record(
        config, precision=precision, frames=len(rows), world_size=world
    )
    return model, pd.DataFrame(history, columns=["epoch", "step", "loss", "mse", "cos", "bce"])


def subject_folds(subjects, n_folds: int, seed: int = 42) -> list[np.ndarray]:
    """Split subject names into ``n_folds`` groups (shuffled with ``seed``, sizes within 1)."""
    names = np.array(sorted(set(subjects)))
    if n_folds < 2:
        raise FergiError(f"--cv {n_folds}: needs at least 2 folds")
    if len(names) < n_folds:
        raise FergiError(f"--cv {n_folds}: only {len(names)} subjects ({', '.join(names)})")
    names = names[np.random.default_rng(seed).permutation(len(names))]
    return [np.sort(part) for part in np.array_split(names, n_folds)]


def cross_validate(
    cache, config: TrainConfig, *, n_folds: int = 3, run_dir=None, progress: bool = True
):
    """Subject-independent k-fold cross-validation of the training recipe.

    Each fold trains a fresh model on the other folds' subjects (resumable under
    ``run_dir/fold<k>/``) and predicts its own; the metrics are computed on all
    out-of-fold predictions together, as AU papers report them.

    Returns
    -------
    metrics : pandas.DataFrame
        :func:`au_metrics` of the pooled predictions.
    predictions : pandas.DataFrame
        Cache row, subject, fold, and true and predicted intensity of each AU.
    histories : list of pandas.DataFrame
    """
    usable = cache.usable
    groups = subject_groups(cache.table)[usable]
    folds = subject_folds(groups, n_folds, config.seed)
    preds, histories = [], []
    for k, test_subjects in enumerate(folds, start=1):
        test = usable[np.isin(groups, test_subjects)]
        train = usable[~np.isin(groups, test_subjects)]
        logger.info("fold %d/%d: test subjects %s", k, n_folds, ", ".join(test_subjects))
        state = None if run_dir is None else Path(run_dir) / f"fold{k}" / "state.pt"
        model, hist = train_model(
            cache, train, config, state_path=state, progress=progress, desc=f"fold {k} "
        )
        hist.insert(0, "fold", k)
        histories.append(hist)
        p = predict(model, cache.faces, test)
        frame = pd.DataFrame(
            {"row": test, "subject": cache.table["subject"].to_numpy()[test], "fold": k}
        )
        truth = cache.labels(test)
        for i, name in enumerate(AU_NAMES):
            frame[f"{name}_true"] = truth[:, i]
            frame[f"{name}_pred"] = p[:, i]
        preds.append(frame)
    predictions = pd.concat(preds, ignore_index=True)
    metrics = au_metrics(
        predictions[[f"{n}_true" for n in AU_NAMES]].to_numpy(),
        predictions[[f"{n}_pred" for n in AU_NAMES]].to_numpy(),
    )
    return metrics, predictions, histories
