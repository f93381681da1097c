"""Throughput of the six baseline scorers (``fergi score``) with random weights.

Usage: python benchmarks/bench_scorers.py [--quick] [--images N] [--batch-size B] [--device D]
                                          [--precision fp32|fp16]

For each scorer, at the published architecture sizes (CLIP ViT-L/14, ViT-H/14 for
PickScore and HPS v2, BLIP ViT-L/16 + BERT-base) with random weights, prints the model
build time, images/second of the whole ``Scorer.score`` call (decoding and preprocessing
in the background pool overlapped with batched inference), and images/second of the
decoding + preprocessing alone. Runs on CPU, and on CUDA when present, in fp32 (fergi's
default) unless ``--precision fp16``. Then a
second ``fergi score``-style run through the cache reports how many images it skipped.

``--quick`` uses tiny versions of the same architectures, loaded from checkpoint files
through ``create_scorer`` (the code path of real weights), on 6 images.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

SCORERS = ("clip", "aesthetic", "blip", "imagereward", "pickscore", "hpsv2")


def _images(folder: Path, n: int, size: int) -> list[Path]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        # Smooth random images (as generated images are), so PNG decoding costs what it does.
        small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        path = folder / f"image_{i}.png"
        Image.fromarray(small).resize((size, size), Image.BICUBIC).save(path)
        paths.append(path)
    return paths


def _full_size_scorer(name: str, tok_dir: Path, special: dict, device, batch_size: int,
                      precision: str = "fp32"):
    """A scorer at the published size with random weights, built in memory (no 4 GB file)."""
    from fergi.scorers import get_scorer_spec
    from fergi.scorers._blip import BLIP_LARGE, BLIPScorer, load_bert_tokenizer
    from fergi.scorers._clip import (
        VIT_H_14,
        VIT_L_14,
        CLIPFamilyScorer,
        aesthetic_mlp,
        load_clip_tokenizer,
    )
    from fergi.scorers._testing import clip_config, random_blip, random_clip

    options = {"device": device, "batch_size": batch_size, "precision": precision}
    if name in ("blip", "imagereward"):
        model = random_blip(BLIP_LARGE, with_head=name == "imagereward")
        if name == "blip":
            model.head = None
        scorer = BLIPScorer(model, load_bert_tokenizer(tok_dir), "itc" if name == "blip" else "imagereward",
                            **options)
    else:
        arch = VIT_L_14 if name in ("clip", "aesthetic") else VIT_H_14
        model = random_clip(clip_config(arch, special))
        kind = {"clip": "cosine", "aesthetic": "aesthetic", "pickscore": "logit", "hpsv2": "cosine"}[name]
        mode = {"pickscore": "crop-hf", "hpsv2": "pad"}.get(name, "crop")
        head = aesthetic_mlp(768) if name == "aesthetic" else None
        scorer = CLIPFamilyScorer(model, load_clip_tokenizer(tok_dir), kind, head=head,
                                  preprocess_mode=mode, clean_text=kind != "logit", **options)
    scorer.spec = get_scorer_spec(name)
    return scorer


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny architectures, 6 images")
    parser.add_argument("--images", type=int, default=None, help="images per scorer (default 16, quick 6)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", action="append", default=None,
                        help="device(s) to run on (default cpu, plus cuda when present)")
    parser.add_argument("--scorers", default=",".join(SCORERS))
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                        help="model dtype (default fp32, as `fergi score`)")
    args = parser.parse_args(argv)

    import torch

    from fergi.scorers import create_scorer
    from fergi.scorers._testing import (
        make_scorer_weights,
        write_tiny_bert_vocab,
        write_tiny_tokenizer,
    )

    n = args.images or (6 if args.quick else 16)
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    names = [s for s in args.scorers.split(",") if s]
    figures: dict = {"quick": args.quick, "images": n, "batch_size": args.batch_size,
                     "precision": args.precision,
                     "threads": torch.get_num_threads(), "runs": []}
    size = "tiny" if args.quick else "full"
    print(f"Scorers with random weights ({size} architectures), {n} images of 512x512 PNG, "
          f"batch {args.batch_size}, {args.precision}, {torch.get_num_threads()} torch threads")
    print(f"{'scorer':<12} {'device':<6} {'build s':>8} {'img/s':>8} {'preproc img/s':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = _images(tmp, n, 512)
        prompts = ["a red cat on a blue sofa, a painting"] * n
        if args.quick:
            weights = make_scorer_weights(tmp / "weights")
        else:
            special = write_tiny_tokenizer(tmp / "tok")
            write_tiny_bert_vocab(tmp / "tok")
        for device in devices:
            for name in names:
                t = time.perf_counter()
                if args.quick:
                    scorer = create_scorer(name, device=device, batch_size=args.batch_size,
                                           precision=args.precision, **weights[name])
                else:
                    scorer = _full_size_scorer(name, tmp / "tok", special, device, args.batch_size,
                                               args.precision)
                build = time.perf_counter() - t
                scorer.score(paths[: min(2, n)], prompts[: min(2, n)])  # warm-up (kernels, allocator)
                t = time.perf_counter()
                scores = scorer.score(paths, prompts)
                wall = time.perf_counter() - t
                t = time.perf_counter()
                for p in paths:
                    scorer.preprocess(p)
                pre = time.perf_counter() - t
                run = {"scorer": name, "device": device, "build_s": build, "images": len(scores),
                       "images_per_s": n / wall, "preprocess_images_per_s": n / pre}
                figures["runs"].append(run)
                print(f"{name:<12} {device:<6} {build:8.2f} {run['images_per_s']:8.2f} "
                      f"{run['preprocess_images_per_s']:14.1f}")
                del scorer

        if args.quick:
            # The cache: a second run over the same folder scores nothing.
            from fergi.batch import score_folder

            table = tmp / "prompts.csv"
            table.write_text("image,prompt\n" + "".join(f"{p.name},{q}\n" for p, q in zip(paths, prompts, strict=True)))
            cache = tmp / "cache.sqlite"
            first = score_folder(tmp, ["clip", "hpsv2"], prompts=table, weights=weights, cache=cache)
            t = time.perf_counter()
            second = score_folder(tmp, ["clip", "hpsv2"], prompts=table, weights=weights, cache=cache)
            figures["cache"] = {"first_scored": sum(first["scored"].values()),
                                "second_scored": sum(second["scored"].values()),
                                "second_cached": sum(second["cached"].values()),
                                "second_s": time.perf_counter() - t}
            print(f"cache: first run scored {figures['cache']['first_scored']}, second run scored "
                  f"{figures['cache']['second_scored']} and reused {figures['cache']['second_cached']} "
                  f"in {figures['cache']['second_s']:.2f} s")
    return figures


if __name__ == "__main__":
    main()
