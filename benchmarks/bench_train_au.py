"""Benchmark: training speed of the FERGI AU model and speed of the preprocessing cache.

1. Training images per second of the full IR-50 (IResNet-50 + 64x6 head) at batch 64:
   one complete optimiser step per batch (augmentation, forward, the Supp. B loss,
   backward, Adam), on the CPU and, when present, on the GPU (channels-last) in fp32
   (the authors' recipe, TF32 off) and with ``--amp`` (mixed precision), after warm-up
   steps.
2. Frames per second of the preprocessing cache (``fergi.au.train.build_cache`` with
   ``preprocessing="fergi"``: decoding, BlazeFace + FaceMesh, alignment, contrast step,
   112x112 write; the default ``authors`` preprocessing needs the authors' landmark
   weights, which a benchmark cannot assume) on a
   synthetic DISFA/DISFA+ tree (MJPEG .avi videos and jpg folders).
3. With ``--amp-icc``: what mixed precision costs in accuracy. The small model of
   the synthetic learning test (tests/au/train/test_train.py) is trained twice on the same
   synthetic subjects, in fp32 and with ``--amp``, and the held-out subjects' ICC(3,1)
   of AU12 and AU4 is printed for each (on the GPU when present, else the CPU, where
   mixed precision is bfloat16 autocast).

The paper trained 3 epochs of DISFA + DISFA+ (~190k frames, both DISFA cameras about
320k) on one GTX 1080 Ti; divide by the images/second to estimate an epoch's time.

Usage::

    python benchmarks/bench_train_au.py [--steps 5] [--batch 64] [--frames 40]
    python benchmarks/bench_train_au.py --quick      # tiny model and data, seconds
    python benchmarks/bench_train_au.py --amp-icc    # ICC in fp32 and with --amp (minutes)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def train_speed(
    device: str, *, batch: int, steps: int, warmup: int, width: int, layers, amp: bool = False
) -> float:
    """Images per second of complete training steps on random faces."""
    import numpy as np
    import torch

    from fergi.au.train import (
        au_loss,
        augment,
        bce_weights,
        class_counts,
        expand_weights,
        mse_weights,
    )
    from fergi.au.train._datasets import DISFA_AUS
    from fergi.au.train._train import (
        TrainConfig,
        _fp32_maths,
        _targets,
        make_model,
        precision_of,
    )

    cfg = TrainConfig(width=width, layers=layers, device=device, amp=amp)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    precision = precision_of(cfg, dev)
    model = make_model(cfg).to(dev).train()
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, size=(batch, 12)).astype(np.float32)
    counts = class_counts(labels)
    w_mse = torch.from_numpy(expand_weights(mse_weights(counts), DISFA_AUS)).to(dev)
    w_bce = torch.from_numpy(expand_weights(bce_weights(counts), DISFA_AUS)).to(dev)
    target = torch.from_numpy(_targets(labels)).to(dev)
    faces = torch.from_numpy(rng.integers(0, 256, size=(batch, 112, 112, 3), dtype=np.uint8))
    amp_dtype = torch.float16 if precision == "amp-fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "amp-fp16")
    gen = torch.Generator().manual_seed(0)

    def step():
        x = faces.to(dev, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        x = augment(x, gen)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=dev.type, dtype=amp_dtype, enabled=precision != "fp32"):
            out = model(x)
        loss = au_loss(out.float(), target, w_mse, w_bce)["loss"]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    with _fp32_maths(cuda and precision == "fp32"):
        for _ in range(warmup):
            step()
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t)


def amp_icc(folder: Path, device: str) -> dict:
    """Held-out ICC(3,1) of AU12 and AU4 after training in fp32 and with ``amp``.

    The data, model and schedule of tests/au/train/test_train.py's learning test: 4 DISFA
    and 2 DISFA+ synthetic subjects of 40 frames (seed 0); SN002 and SN006 held
    out; width 4, one block a stage, batch 16, learning rate 3e-3, 6 epochs.
    """
    import numpy as np

    from fergi.au.train import (
        TrainConfig,
        au_metrics,
        build_cache,
        predict,
        read_datasets,
        train_model,
        write_synthetic_datasets,
    )

    disfa, plus = write_synthetic_datasets(
        folder, disfa_subjects=4, plus_subjects=2, frames=40, seed=0
    )
    cache = build_cache(read_datasets(disfa, plus), folder / "cache", progress=False)
    subjects = cache.table["subject"].to_numpy()[cache.usable]
    held_out = np.isin(subjects, ["SN002", "SN006"])
    train, test = cache.usable[~held_out], cache.usable[held_out]
    tiny = dict(width=4, layers=(1, 1, 1, 1), batch_size=16, lr_head=3e-3, lr_backbone=3e-3)
    out = {}
    for amp in (False, True):
        config = TrainConfig(epochs=6, device=device, amp=amp, **tiny)
        model, _ = train_model(cache, train, config, progress=False)
        table = au_metrics(cache.labels(test), predict(model, cache.faces, test))
        out[model.fergi_training_["precision"]] = (
            table.loc["AU12", "icc"],
            table.loc["AU4", "icc"],
        )
    return out


def cache_speed(
    folder: Path, *, disfa_subjects: int, plus_subjects: int, frames: int, workers: int
) -> tuple[int, float]:
    """``(frames, frames per second)`` of building the cache of a synthetic tree."""
    from fergi.au.train import build_cache, read_datasets, write_synthetic_datasets

    disfa, plus = write_synthetic_datasets(
        folder, disfa_subjects=disfa_subjects, plus_subjects=plus_subjects, frames=frames
    )
    table = read_datasets(disfa, plus)
    t = time.perf_counter()
    build_cache(table, folder / f"cache_{workers}", workers=workers, progress=False,
                preprocessing="fergi")
    return len(table), len(table) / (time.perf_counter() - t)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny model (width 4, one block a stage) and data"
    )
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (default 5)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    parser.add_argument(
        "--frames", type=int, default=40, help="frames per synthetic subject (default 40)"
    )
    parser.add_argument("--workers", type=int, default=1, help="cache worker processes (default 1)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument(
        "--amp-icc",
        action="store_true",
        help="only: held-out ICC of the synthetic learning test in fp32 and with --amp",
    )
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.amp_icc:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        name = (
            torch.cuda.get_device_name()
            if device == "cuda"
            else f"cpu ({torch.get_num_threads()} threads)"
        )
        print(f"held-out ICC(3,1), synthetic learning test, on {name}:")
        with tempfile.TemporaryDirectory() as tmp:
            for precision, (au12, au4) in amp_icc(Path(tmp), device).items():
                print(f"  {precision:<9} AU12 {au12:.3f}  AU4 {au4:.3f}")
        return
    if args.quick:
        model = {"width": 4, "layers": (1, 1, 1, 1)}
        batch, steps, warmup = 8, 3, 2
        data = {"disfa_subjects": 1, "plus_subjects": 1, "frames": 6}
        label = "tiny model (width 4, layers 1-1-1-1)"
    else:
        model = {"width": 64, "layers": (3, 4, 14, 3)}
        batch, steps, warmup = args.batch, args.steps, 2
        data = {"disfa_subjects": 2, "plus_subjects": 2, "frames": args.frames}
        label = "IR-50 (IResNet-50, 64x6 head)"
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"training speed, {label}, batch {batch}, {steps} timed steps after {warmup} warm-up:")
    for device in devices:
        name = (
            torch.cuda.get_device_name()
            if device == "cuda"
            else f"cpu ({torch.get_num_threads()} threads)"
        )
        # On the CPU, only the recipe's fp32: bfloat16 autocast there is for checks.
        for amp in (False, True) if device == "cuda" else (False,):
            ips = train_speed(device, batch=batch, steps=steps, warmup=warmup, amp=amp, **model)
            label = f"{name}, {'--amp' if amp else 'fp32'}" if device == "cuda" else name
            print(f"  {label:<40} {ips:9.1f} images/s")
    with tempfile.TemporaryDirectory() as tmp:
        n, fps = cache_speed(Path(tmp), workers=args.workers, **data)
    print(f"preprocessing cache: {n} frames, {fps:.1f} frames/s ({args.workers} worker(s))")


if __name__ == "__main__":
    main()
