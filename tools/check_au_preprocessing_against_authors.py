"""Check fergi's ``preprocessing="authors"`` against the FERGI authors' own preprocessing code.

Usage:
    git clone https://github.com/ShuangquanFeng/FERGI authors      # or any copy of it
    pip download --no-deps -d tv torchvision && python -m zipfile -e tv/torchvision-*.whl tv/site
    python tools/check_au_preprocessing_against_authors.py authors --torchvision tv/site \
        [--landmarks mobilefacenet_model_best.pth.tar] [--ir50 checkpoint_epoch3.pth]

The script imports the authors' ``preprocess_datasets.preprocess_image`` (with its
``crop_image``, ``align_face``, ``get_landmark`` and ``heNlm``), ``utils.transforms_compose``
and ``iresnet_modified.iresnet_basic`` from the copy given (nothing of theirs is stored in
fergi), runs their pipeline and fergi's on the same frames with the same landmark weights,
and prints the largest differences of the 112 x 112 crops, the network input tensors, the
pitch/yaw ratios, the detection scores and the IR-50 outputs.

Their import-time side effects are handled, and printed in the report:

* ``preprocess_datasets`` creates a MediaPipe ``FaceDetector`` from
  ``pretrained_models/blaze_face_short_range.tflite`` and loads
  ``pretrained_models/mobilefacenet_model_best.pth.tar`` at import, by relative path: the
  script imports it from a temporary folder holding those two names, linked to mediapipe's
  bundled short-range model (their float16 task file cannot be downloaded here, so the
  detector is the same model on both sides) and to the landmark weights (``--landmarks``,
  else random weights in their format around a mean face, seed 0, jitter 0.02);
* ``config.py`` (imported by ``utils``) lists the DISFA and DISFA+ label folders at import:
  empty ones are made beside the temporary folder;
* ``PIL.Image.ANTIALIAS`` (removed in Pillow 10) is set to ``PIL.Image.LANCZOS``, its
  value before;
* torchvision: its wheels do not load with the CPU torch fergi pins (the C ops fail to
  register), but the transforms used here are pure Python. ``--torchvision DIR`` (an
  unpacked torchvision wheel) imports ``torchvision.transforms`` from DIR with the package's
  ``__init__`` (which loads the C ops) bypassed, so their transforms are torchvision's own
  code. Without it, an importable torchvision is used; else a minimal shim, announced in the
  report (the comparison of those transforms is then not independent).

Frames: ``skimage.data.astronaut()``, matplotlib's ``grace_hopper.jpg``, the astronaut
rolled by 20 degrees, enlarged 6x (so the alignment shrinks first, by 2), moved against the
top-left corner (so the margin box leaves the frame and is padded), with a synthetic frown,
and the last frame of a smile video made by ``fergi.face.write_reaction_video`` (decoded
by fergi, and the same RGB array is given to both). Each frame goes through both pipelines
twice: with each side's own detection, and with the same detection box injected into both
(which takes the detector out of the comparison).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from fergi.au import IR50AUEstimator
from fergi.face import (
    AuthorsPreprocessor,
    bundled_detector_model,
    compare_detectors,
    save_synthetic_landmark_weights,
    synthesize_expression,
    write_reaction_video,
)

AUTHORS_STEPS = [("cvtColor", "BGR2RGB"),
                 ("cropping", ("mediapipe", {"ymin": -0.2, "ymax": 0.05, "xmin": -0.125, "xmax": 0.125})),
                 ("alignment", 112),
                 ("heNlm", (0.5, 0.5)),
                 ("padding", None),
                 ("cvtColor", "RGB2BGR")]
# The training transform steps of DISFAwithPlus_train_model.py; include_random=False drops
# the random ones, as clips_facial_process.py does.
AUTHORS_TRANSFORM = [("BGR2RGB", None), ("RandomHorizontalFlip", None),
                     ("RandomResizedCrop", {"size": 112, "scale": (0.90, 1), "ratio": (19 / 20, 20 / 19)}),
                     ("Resize", 112)]


def _torchvision(site: Path | None) -> str:
    """Make ``torchvision.transforms`` importable; say how."""
    if site is not None:
        package = types.ModuleType("torchvision")
        package.__path__ = [str(site / "torchvision")]
        sys.modules["torchvision"] = package
        from torchvision import transforms

        return f"torchvision's own transforms from {site} (package __init__ and C ops bypassed)"
    try:
        from torchvision import transforms  # noqa: F401

        return "installed torchvision"
    except Exception:
        for name in [n for n in sys.modules if n.startswith("torchvision")]:
            del sys.modules[name]
        raise ImportError("no usable torchvision") from None


def _shim_torchvision() -> str:
    class Compose:
        def __init__(self, steps):
            self.steps = steps

        def __call__(self, x):
            for step in self.steps:
                x = step(x)
            return x

    class Lambda:
        def __init__(self, fn):
            self.fn = fn

        def __call__(self, x):
            return self.fn(x)

    class ToPILImage:
        def __call__(self, x):
            return PIL.Image.fromarray(np.ascontiguousarray(x), mode="RGB")

    class Resize:
        def __init__(self, size):
            self.size = size

        def __call__(self, img):
            return img.resize((self.size[1], self.size[0]), PIL.Image.BILINEAR)

    class ToTensor:
        def __call__(self, img):
            return torch.from_numpy(np.array(img, np.uint8)).permute(2, 0, 1).contiguous().float().div(255)

    package = types.ModuleType("torchvision")
    package.__path__ = []
    package.transforms = types.ModuleType("torchvision.transforms")
    package.transforms.__dict__.update(Compose=Compose, Lambda=Lambda, ToPILImage=ToPILImage,
                                       Resize=Resize, ToTensor=ToTensor)
    sys.modules["torchvision"] = package
    sys.modules["torchvision.transforms"] = package.transforms
    return "MINIMAL SHIM (no torchvision found): ToPILImage/Resize/ToTensor written out"


@contextlib.contextmanager
def _cwd(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _import_authors(repo: Path, landmarks: Path, tmp: Path):
    """Import their preprocess_datasets, utils and iresnet_modified from ``repo``."""
    models = tmp / "pretrained_models"
    models.mkdir()
    (models / "blaze_face_short_range.tflite").symlink_to(bundled_detector_model())
    (models / "mobilefacenet_model_best.pth.tar").symlink_to(landmarks.resolve())
    # config.py (imported by utils) lists the DISFA label folders at import: empty ones do.
    for folder in ("FER_datasets/DISFA/ActionUnit_Labels", "FER_datasets/DISFAPlus/Labels"):
        (tmp.parent / folder).mkdir(parents=True, exist_ok=True)
    if not hasattr(PIL.Image, "ANTIALIAS"):
        PIL.Image.ANTIALIAS = PIL.Image.LANCZOS
    sys.path.insert(0, str(repo.resolve()))
    with _cwd(tmp):
        import iresnet_modified
        import preprocess_datasets
        import utils
    return preprocess_datasets, utils, iresnet_modified


def _frames(tmp: Path) -> dict[str, np.ndarray]:
    from matplotlib import cbook
    from skimage import data, transform

    from fergi.video import iter_frames

    astronaut = data.astronaut()
    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        hopper = np.asarray(PIL.Image.open(fh).convert("RGB"))
    rolled = (transform.rotate(astronaut, 20, center=(230, 140), mode="edge") * 255).round().astype(np.uint8)
    big = np.asarray(PIL.Image.fromarray(astronaut).resize((3072, 3072), PIL.Image.BICUBIC))
    corner = np.zeros_like(astronaut)
    corner[:400, :340] = astronaut[70:470, 160:500]  # the face against the top-left corner
    frown = synthesize_expression(astronaut, frown=1.0)
    video = write_reaction_video(tmp / "smile.mp4", astronaut, neutral_s=0.2, expression_s=0.4, smile=1.0)
    last = None
    for _t, frame in iter_frames(video, fps=30.0):
        last = frame
    return {"astronaut": astronaut, "grace_hopper": hopper, "rolled_20deg": rolled,
            "enlarged_6x": big, "top_left_corner": np.ascontiguousarray(corner),
            "frown": frown, "smile_video_frame": last}


class _FixedDetector:
    """Stands in for their module's ``detector``: always the given box and score."""

    def __init__(self, box, score):
        x, y, w, h = box
        bbox = types.SimpleNamespace(origin_x=x, origin_y=y, width=w, height=h)
        category = types.SimpleNamespace(score=score)
        self.result = types.SimpleNamespace(
            detections=[types.SimpleNamespace(bounding_box=bbox, categories=[category])])

    def detect(self, image):
        return self.result


def _theirs(mod, utils, frame_rgb, detector=None):
    """Their clips_facial_process.py on one frame (OpenCV's BGR order in)."""
    saved = mod.detector
    if detector is not None:
        mod.detector = detector
    try:
        img, score, pir, yir = mod.preprocess_image(np.ascontiguousarray(frame_rgb[:, :, ::-1]),
                                                    AUTHORS_STEPS, "cpu")
    finally:
        mod.detector = saved
    if not score:
        return None
    tensor = utils.transforms_compose(AUTHORS_TRANSFORM, include_random=False)(img)
    return img[:, :, ::-1], tensor.permute(1, 2, 0).numpy(), float(score), float(pir), float(yir)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("repo", type=Path, help="a copy of ShuangquanFeng/FERGI")
    parser.add_argument("--landmarks", type=Path, help="mobilefacenet_model_best.pth.tar "
                        "(default: random weights in their format around a mean face)")
    parser.add_argument("--ir50", type=Path, help="an IR-50 AU checkpoint (default: random "
                        "weights of their iresnet_basic, seed 0)")
    parser.add_argument("--torchvision", type=Path, help="an unpacked torchvision wheel")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        try:
            how = _torchvision(args.torchvision)
        except ImportError:
            how = _shim_torchvision()
        landmarks = args.landmarks or save_synthetic_landmark_weights(
            tmp / "mobilefacenet_random.pth.tar", seed=0, jitter=0.02)
        (tmp / "authors").mkdir()
        mod, utils, iresnet = _import_authors(args.repo, landmarks, tmp / "authors")
        torch.manual_seed(0)
        their_ir50 = iresnet.iresnet_basic(n_layers=50, n_features=64 * 6).eval()
        ir50_path = args.ir50
        if ir50_path is None:
            ir50_path = tmp / "ir50_random.pth"
            torch.save(their_ir50.state_dict(), ir50_path)
        else:
            their_ir50.load_state_dict(torch.load(ir50_path, map_location="cpu"))
        ours_ir50 = IR50AUEstimator(ir50_path, device="cpu", batch_size=1)
        prep = AuthorsPreprocessor(landmarks)
        frames = _frames(tmp)

        print(f"authors' code: {args.repo.resolve()}")
        print(f"torchvision: {how}")
        print(f"landmark weights: {args.landmarks or 'random, their format (seed 0, jitter 0.02)'}")
        print(f"IR-50: {args.ir50 or 'random weights of their iresnet_basic (seed 0)'}")
        print(f"detector: mediapipe's bundled {bundled_detector_model().name} on both sides; "
              "PIL.Image.ANTIALIAS = LANCZOS")
        print()
        header = (f"{'frame':<18} {'detector':<9} {'box (x, y, w, h)':<22} {'crop max':>8} {'crop n>0':>8} "
                  f"{'input max':>9} {'score':>7} {'pir':>8} {'yir':>8} {'IR-50 max':>9}")
        print(header)
        print("-" * len(header))
        worst = {"crop": 0, "pir": 0.0, "yir": 0.0, "ir50": 0.0, "score": 0.0}
        for label, frame in frames.items():
            ours = prep.process(frame)
            for mode in ("own", "injected"):
                if mode == "own":
                    mine = ours
                    theirs = _theirs(mod, utils, frame)
                else:
                    if ours.box is None:
                        continue
                    mine = prep.process(frame, box=ours.box, score=ours.score)
                    theirs = _theirs(mod, utils, frame, _FixedDetector(ours.box, ours.score))
                if theirs is None or mine.face is None:
                    print(f"{label:<18} {mode:<9} face found: fergi {mine.face is not None}, "
                          f"authors {theirs is not None}")
                    continue
                crop, tensor, score, pir, yir = theirs
                diff = np.abs(crop.astype(int) - mine.face.astype(int))
                with torch.no_grad():
                    out_theirs = their_ir50(torch.from_numpy(tensor).permute(2, 0, 1)[None]).numpy()
                out_ours = ours_ir50.predict_outputs(mine.tensor()[None])
                d = {"crop": int(diff.max()), "pir": abs(pir - mine.pir), "yir": abs(yir - mine.yir),
                     "ir50": float(np.abs(out_theirs - out_ours).max()), "score": abs(score - mine.score)}
                for k, v in d.items():
                    worst[k] = max(worst[k], v)
                print(f"{label:<18} {mode:<9} {str(mine.box):<22} {d['crop']:>8} {int((diff > 0).sum()):>8} "
                      f"{float(np.abs(tensor - mine.tensor()).max()):>9.2e} {d['score']:>7.1e} "
                      f"{d['pir']:>8.1e} {d['yir']:>8.1e} {d['ir50']:>9.2e}")
        print()
        print(f"largest differences: crop {worst['crop']}/255, pitch ratio {worst['pir']:.3g}, "
              f"yaw ratio {worst['yir']:.3g}, score {worst['score']:.3g}, IR-50 output {worst['ir50']:.3g}")
        det = compare_detectors(list(frames.values()))
        print(f"BlazeFace box/score differences over {det['n_images']} frames (bundled model): "
              f"Tasks API vs legacy FaceDetection {det['tasks_vs_legacy'][0]:.3f} px / "
              f"{det['tasks_vs_legacy'][1]:.2g}; Tasks API vs FaceMesh graph "
              f"{det['tasks_vs_facemesh'][0]:.3f} px / {det['tasks_vs_facemesh'][1]:.2g}")
        prep.close()


if __name__ == "__main__":
    main()
