"""The FERGI authors' AU-model preprocessing, re-implemented exactly (``preprocessing="authors"``).

The released per-frame AU values were made by ``clips_facial_process.py`` of
ShuangquanFeng/FERGI with the ``preprocess_steps`` of ``DISFAwithPlus_train_model.py``
(the same steps ``preprocess_datasets.py`` applied to DISFA/DISFA+ for training),
followed by the inference transform of ``utils.transforms_compose(...,
include_random=False)``. On a frame (fergi frames are RGB: the authors' first step,
``BGR2RGB`` of OpenCV's frame, gives the same array) the steps are:

1. **Detection**: MediaPipe BlazeFace short range through the Tasks API
   ``FaceDetector`` (default options: score threshold 0.5), the *widest* face (by box
   width, first on ties); its score is ``face_detection_confidence_score``. The box is
   in whole pixels (the Tasks API truncates the relative box towards zero).
2. **Margin box** (``crop_image``): top ``int(-0.2 h)``, bottom ``int(0.05 h)``, sides
   ``int(-/+0.125 w)`` with ``int()`` truncation of each margin; when the box leaves the
   frame the whole frame is first padded black by ``h`` above and below and ``w`` left
   and right (the box's own height and width, whatever the overflow).
3. **Landmarks and alignment** (``get_landmark``, ``align_face``): the crop goes
   through ``ToPILImage``, ``Resize((112, 112))`` (PIL bilinear) and ``ToTensor`` into
   MobileFaceNet; its 68 points (fractions of the crop) are scaled by the crop's width
   and height. The ffhq-dataset oriented quad (eyes and outer mouth corners) spans
   from the jaw's ends (points 0 and 16) and from half the eye-to-point-9 depth above
   the eyes to 1.05 of it below; the image is shrunk with Lanczos when the quad is
   over 4x the output, cropped to the quad's bounds and mapped with PIL's QUAD
   transform (bilinear) to at most 112 px, keeping the quad's aspect. The pitch/yaw
   ratios come from the same landmarks in the oriented frame
   (:func:`fergi.face.pose_ratios_68`).
4. **heNlm**: on the RGB array read as BGR (their quirk: the luma weights of red and
   blue are swapped), the Y channel of YCrCb is half histogram-equalised and half
   min-max stretched, truncated to uint8, and converted back.
5. **Padding** to a square (black, the extra split with the smaller half first), then
   ``RGB2BGR`` and the transform's ``BGR2RGB`` (which cancel), ``ToPILImage``,
   ``Resize((112, 112))`` (identity: the padded face is already 112 x 112) and
   ``ToTensor`` (float32 ``/ 255``).

Detector model. The authors' code loads ``pretrained_models/blaze_face_short_range.tflite``,
the float16 task file of MediaPipe's model card, which cannot be downloaded here.
fergi runs the short-range model that ships inside the ``mediapipe`` wheel
(``mediapipe/modules/face_detection/face_detection_short_range.tflite``, 229,714 bytes,
SHA-256 ``bbff11ce...``) through the same Tasks API ``FaceDetector`` class; this works
offline and gives the same score as the legacy ``FaceDetection`` solution and a box
that is the legacy box truncated to whole pixels. Whether its weights are byte-equal
to the task file's could NOT be checked (its size suggests float16 weights, as the
task file has, but the task file also carries TFLite metadata, so their hashes differ
in any case). :func:`compare_detectors` measures the box differences between the ways
fergi can run the bundled model (the Tasks API, the legacy solution and the FaceMesh
graph of :class:`fergi.face.FaceAnalyzer`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fergi.face._landmarks import FaceAnalyzer, _quiet_stderr
from fergi.face._mobilefacenet import landmark_weights_path, load_mobilefacenet
from fergi.face._pose import (
    LM68_CHIN,
    LM68_EDGE_LEFT,
    LM68_EDGE_RIGHT,
    LM68_EYE_LEFT,
    LM68_EYE_RIGHT,
    LM68_MOUTH_LEFT,
    LM68_MOUTH_RIGHT,
    face_axes,
    pose_ratios_68,
)

logger = logging.getLogger(__name__)

#: The authors' ``cropping`` margins (``preprocess_steps``): fractions of the box height
#: (``ymin``, ``ymax``) and width (``xmin``, ``xmax``) added to its edges.
AUTHORS_MARGINS = {"ymin": -0.2, "ymax": 0.05, "xmin": -0.125, "xmax": 0.125}
#: Their ``alignment`` output size and ``heNlm`` weights (equalisation, linear map).
AUTHORS_OUTPUT_SIZE = 112
AUTHORS_HENLM_WEIGHTS = (0.5, 0.5)
#: Names of the face preprocessings: the authors' exact pipeline, fergi's own.
PREPROCESSINGS = ("authors", "fergi")


def bundled_detector_model() -> Path:
    """Path of the BlazeFace short-range model inside the installed ``mediapipe``."""
    import mediapipe

    return Path(mediapipe.__file__).parent / "modules" / "face_detection" / (
        "face_detection_short_range.tflite"
    )


@dataclass
class AuthorsFace:
    """One frame through the authors' preprocessing.

    Attributes
    ----------
    score : float
        BlazeFace score of the widest face (0.0: no face, the other fields None/NaN).
    box : tuple of int or None
        ``(origin_x, origin_y, width, height)`` of the detection, whole pixels.
    face : numpy.ndarray or None
        ``(112, 112, 3)`` uint8 RGB, the network input before ``ToTensor``.
    pir, yir : float
        Pitch and yaw indicative ratios (NaN without a face).
    landmarks : numpy.ndarray or None
        ``(68, 2)`` landmarks in pixels of the margin crop.
    """

    score: float
    box: tuple[int, int, int, int] | None = None
    face: np.ndarray | None = None
    pir: float = float("nan")
    yir: float = float("nan")
    landmarks: np.ndarray | None = None

    def tensor(self) -> np.ndarray:
        """The face as ``ToTensor`` gives it, channels last: float32 ``(112, 112, 3)`` in [0, 1]."""
        return to_tensor(self.face)


# ------------------------------------------------------------------ torchvision, exactly
def to_pil_image(array: np.ndarray):
    """``torchvision.transforms.ToPILImage`` on an ``(H, W, 3)`` uint8 array: an RGB image."""
    import PIL.Image

    return PIL.Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def resize_112(image, size: int = AUTHORS_OUTPUT_SIZE):
    """``torchvision.transforms.Resize((size, size))`` on a PIL image: PIL bilinear.

    torchvision hands PIL images to ``PIL.Image.resize`` with ``BILINEAR`` (PIL's
    resampling filters always antialias), and PIL returns a copy when the size is
    already the target.
    """
    import PIL.Image

    return image.resize((size, size), PIL.Image.BILINEAR)


def to_tensor(array) -> np.ndarray:
    """``torchvision.transforms.ToTensor`` (channels last): float32 ``uint8 / 255``."""
    import torch

    # torchvision converts to float32 first, then divides (not a float64 division).
    return (torch.from_numpy(np.array(array, dtype=np.uint8)).to(torch.float32).div(255)).numpy()


# ------------------------------------------------------------------ steps 2, 4, 5
def margin_crop(image: np.ndarray, box) -> np.ndarray:
    """The authors' ``crop_image`` after detection: margin box, black padding when out.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, 3)`` uint8 RGB frame.
    box : sequence of 4 int
        ``(origin_x, origin_y, width, height)`` of the detection.
    """
    import cv2

    xmin, ymin, width, height = (int(v) for v in box)
    xmax, ymax = xmin + width, ymin + height
    # Quirk: each margin is truncated towards zero by int() separately (-0.2 * 95 -> -19).
    top = int(AUTHORS_MARGINS["ymin"] * height)
    bottom = int(AUTHORS_MARGINS["ymax"] * height)
    left = int(AUTHORS_MARGINS["xmin"] * width)
    right = int(AUTHORS_MARGINS["xmax"] * width)
    ymin, ymax, xmin, xmax = ymin + top, ymax + bottom, xmin + left, xmax + right
    if ymin < 0 or ymax > image.shape[0] or xmin < 0 or xmax > image.shape[1]:
        # Quirk: the padding is the box's own height and width on every side, not the
        # overflow; a box further out than that keeps Python's negative-index slicing.
        image = cv2.copyMakeBorder(image, height, height, width, width, cv2.BORDER_CONSTANT,
                                   value=[0, 0, 0])
        ymin, ymax, xmin, xmax = ymin + height, ymax + height, xmin + width, xmax + width
    return image[ymin:ymax, xmin:xmax]


def henlm(image: np.ndarray, weights=AUTHORS_HENLM_WEIGHTS) -> np.ndarray:
    """The authors' ``weighted_histogram_equalization_and_linear_mapping`` (``heNlm``).

    Applied, as in their pipeline, to an RGB array although the conversions say BGR.
    """
    import cv2

    # Quirk: their array is RGB here (after BGR2RGB) but converted as if BGR, so Y is
    # 0.299 B + 0.587 G + 0.114 R; YCrCb2BGR below undoes it the same way.
    ycc = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2YCrCb)
    he = ycc.copy()
    he[:, :, 0] = cv2.equalizeHist(he[:, :, 0])
    lm = ycc.astype(np.float64)
    y = lm[:, :, 0]
    # Quirk: a flat Y (max == min) divides by zero, as theirs does (never on a face).
    with np.errstate(divide="ignore", invalid="ignore"):
        lm[:, :, 0] = (y - y.min()) / (y.max() - y.min()) * 255
        # Quirk: the blend is truncated (astype), not rounded.
        out = ((weights[0] * he.astype(np.float64) + weights[1] * lm) / np.sum(weights)).astype(
            np.uint8
        )
    return cv2.cvtColor(out, cv2.COLOR_YCrCb2BGR)


def pad_square(image: np.ndarray) -> np.ndarray:
    """The authors' ``pad_image``: black padding to a square, the smaller half first."""
    import cv2

    h, w = image.shape[:2]
    size = max(h, w)
    top, left = (size - h) // 2, (size - w) // 2
    return cv2.copyMakeBorder(image, top, size - h - top, left, size - w - left,
                              cv2.BORDER_CONSTANT, value=[0, 0, 0])


# ------------------------------------------------------------------ step 3
def align_authors(image: np.ndarray, landmarks: np.ndarray, output_size: int = AUTHORS_OUTPUT_SIZE):
    """The authors' ``align_face`` (after NVlabs' ffhq-dataset) given the 68 landmarks.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, 3)`` uint8 margin crop.
    landmarks : numpy.ndarray
        ``(68, 2)`` MobileFaceNet output as fractions of the crop (float32, as the
        network gives them).

    Returns
    -------
    aligned : numpy.ndarray
        uint8, at most ``output_size`` on its longer side.
    pir, yir : float
        The pose ratios in the oriented face frame.
    lm : numpy.ndarray
        ``(68, 2)`` float64 landmarks in crop pixels.
    """
    import PIL.Image

    # float32 landmarks times an int array: float64 from here on, as in theirs.
    lm = np.asarray(landmarks) * np.array([image.shape[1], image.shape[0]])
    eye_left = np.mean(lm[list(LM68_EYE_LEFT)], axis=0)
    eye_right = np.mean(lm[list(LM68_EYE_RIGHT)], axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    axes = face_axes(eye_left[None], eye_right[None], lm[LM68_MOUTH_LEFT][None],
                     lm[LM68_MOUTH_RIGHT][None])[0]
    x, y = axes[:, 0], axes[:, 1]
    xscale_left, _ = np.linalg.solve(axes, eye_avg - lm[LM68_EDGE_LEFT])
    xscale_right, _ = np.linalg.solve(axes, lm[LM68_EDGE_RIGHT] - eye_avg)
    # Quirk: point 9 (one right of the chin tip, 8) sets the face depth.
    _, yscale_down = np.linalg.solve(axes, lm[LM68_CHIN] - eye_avg)
    pir, yir = pose_ratios_68(lm)
    yscale_up = yscale_down / 2
    yscale_down = yscale_down * 1.05
    quad = np.stack([eye_avg - xscale_left * x - yscale_up * y,
                     eye_avg - xscale_left * x + yscale_down * y,
                     eye_avg + xscale_right * x + yscale_down * y,
                     eye_avg + xscale_right * x - yscale_up * y])
    # Quirk (ffhq naming): the first side of the quad runs down the face, so it is ysize.
    ysize, xsize = np.linalg.norm(np.diff(quad[:3, :], axis=0), axis=1)
    if xsize >= ysize:
        out_x, out_y = output_size, output_size * (ysize / xsize)
    else:
        out_x, out_y = output_size * (xsize / ysize), output_size
    qsize = max(xsize, ysize)

    img = PIL.Image.fromarray(np.ascontiguousarray(image))
    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        rsize = (int(np.rint(float(img.size[0]) / shrink)), int(np.rint(float(img.size[1]) / shrink)))
        # PIL.Image.ANTIALIAS in their code (removed in Pillow 10) is LANCZOS.
        img = img.resize(rsize, PIL.Image.LANCZOS)
        quad /= shrink
        qsize /= shrink
    crop = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))),
            int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))
    crop = (max(crop[0], 0), max(crop[1], 0), min(crop[2], img.size[0]), min(crop[3], img.size[1]))
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]
    # Quirk: int() truncates the shorter side (e.g. 104.9 -> 104 px).
    img = img.transform((int(out_x), int(out_y)), PIL.Image.QUAD, (quad + 0.5).flatten(),
                        PIL.Image.BILINEAR)
    return np.array(img), pir, yir, lm


# ------------------------------------------------------------------ the whole path
class AuthorsPreprocessor:
    """The authors' AU-model preprocessing of whole frames (see the module docstring).

    Parameters
    ----------
    landmarks : str or path-like, optional
        MobileFaceNet weights (the authors' ``mobilefacenet_model_best.pth.tar``);
        default: found in fergi's model folder (``$FERGI_MODELS_DIR``).
    device : str, default "cpu"
        Where MobileFaceNet runs.
    landmark_model : torch.nn.Module, optional
        An already loaded network (then ``landmarks`` is ignored).

    Notes
    -----
    The detector and network are created lazily, so a preprocessor can be sent to a
    worker process; create one per process and reuse it.
    """

    def __init__(self, landmarks: str | os.PathLike | None = None, *, device: str = "cpu",
                 landmark_model=None):
        self.device = device
        self._model = landmark_model
        self.landmarks = (
            getattr(landmark_model, "weights_path", None)
            if landmark_model is not None
            else str(landmark_weights_path(landmarks))
        )
        self._detector = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_detector"] = None
        return state

    def close(self) -> None:
        """Release the MediaPipe detector."""
        if self._detector is not None:
            self._detector.close()
            self._detector = None

    @property
    def model(self):
        if self._model is None:
            self._model = load_mobilefacenet(self.landmarks, device=self.device)
        return self._model

    def _get_detector(self):
        if self._detector is None:
            with _quiet_stderr():
                from mediapipe.tasks import python as mp_python
                from mediapipe.tasks.python import vision

                options = vision.FaceDetectorOptions(
                    base_options=mp_python.BaseOptions(
                        model_asset_path=str(bundled_detector_model())
                    )
                )
                self._detector = vision.FaceDetector.create_from_options(options)
        return self._detector

    def detect(self, image: np.ndarray) -> tuple[float, tuple[int, int, int, int] | None]:
        """Score and ``(origin_x, origin_y, width, height)`` of the widest face, or ``(0.0, None)``."""
        import mediapipe as mp

        detector = self._get_detector()
        frame = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image[..., :3]))
        detections = detector.detect(frame).detections
        if not detections:
            return 0.0, None
        # The widest box (np.argmax: the first on ties), not the best-scored one.
        best = detections[int(np.argmax([d.bounding_box.width for d in detections]))]
        bb = best.bounding_box
        return float(best.categories[0].score), (bb.origin_x, bb.origin_y, bb.width, bb.height)

    def predict_landmarks(self, crop: np.ndarray) -> np.ndarray:
        """``(68, 2)`` float32 MobileFaceNet landmarks, as fractions of ``crop``."""
        import torch

        tensor = to_tensor(resize_112(to_pil_image(crop)))
        batch = torch.from_numpy(tensor).permute(2, 0, 1).unsqueeze(0).to(self.device)
        with torch.no_grad():
            out = self.model(batch)
        return out[0].reshape(68, 2).cpu().numpy()

    def process(self, image: np.ndarray, *, box=None, score: float | None = None) -> AuthorsFace:
        """One RGB uint8 frame through the authors' steps.

        Parameters
        ----------
        image : numpy.ndarray
            ``(H, W, 3)`` uint8 RGB.
        box : sequence of 4 int, optional
            Use this ``(origin_x, origin_y, width, height)`` instead of detecting (to
            compare pipelines with the detector taken out); ``score`` then defaults to 1.
        """
        image = np.asarray(image)[..., :3]
        if box is None:
            score, box = self.detect(image)
            if box is None:
                return AuthorsFace(0.0)
        else:
            box = tuple(int(v) for v in box)
            score = 1.0 if score is None else float(score)
        crop = margin_crop(image, box)
        if crop.size == 0:
            # Their preprocess_image returns a 2-tuple here (``return False, None``),
            # which the clip script cannot unpack; fergi counts the frame as faceless.
            return AuthorsFace(0.0, box)
        points = self.predict_landmarks(crop)
        aligned, pir, yir, lm = align_authors(crop, points)
        if aligned.size == 0:
            return AuthorsFace(0.0, box)
        face = pad_square(henlm(aligned))
        if face.shape[:2] != (AUTHORS_OUTPUT_SIZE, AUTHORS_OUTPUT_SIZE):
            face = np.asarray(resize_112(to_pil_image(face)))
        return AuthorsFace(score, box, face, float(pir), float(yir), lm)


def compare_detectors(images) -> dict:
    """Largest box differences (pixels) and score differences between fergi's BlazeFace runs.

    The bundled short-range model run three ways on each image: the Tasks API
    ``FaceDetector`` (fergi's ``authors`` path, whole-pixel box), the legacy
    ``mediapipe.solutions.face_detection`` (``model_selection=0``) and the FaceMesh
    graph's detections (:class:`fergi.face.FaceAnalyzer`).

    Returns
    -------
    dict
        ``{"tasks_vs_legacy": (max box px, max score), "tasks_vs_facemesh": ...,
        "n_images": n}``; differences are measured on the widest face, the box as
        ``(x, y, w, h)``.
    """
    import mediapipe as mp

    prep = AuthorsPreprocessor.__new__(AuthorsPreprocessor)
    prep._detector = None
    analyzer = FaceAnalyzer()
    out = {"tasks_vs_legacy": [0.0, 0.0], "tasks_vs_facemesh": [0.0, 0.0], "n_images": 0}
    with _quiet_stderr():
        legacy = mp.solutions.face_detection.FaceDetection(model_selection=0)
    try:
        for image in images:
            image = np.ascontiguousarray(np.asarray(image)[..., :3])
            h, w = image.shape[:2]
            score, box = prep.detect(image)
            if box is None:
                continue
            out["n_images"] += 1
            dets = legacy.process(image).detections or []
            if dets:
                widest = max(dets, key=lambda d: d.location_data.relative_bounding_box.width)
                bb = widest.location_data.relative_bounding_box
                other = np.array([bb.xmin * w, bb.ymin * h, bb.width * w, bb.height * h])
                _update(out["tasks_vs_legacy"], box, other, score, widest.score[0])
            obs = analyzer.process(image)
            if obs.box is not None:
                x0, y0, x1, y1 = obs.box
                _update(out["tasks_vs_facemesh"], box, np.array([x0, y0, x1 - x0, y1 - y0]),
                        score, obs.score)
    finally:
        legacy.close()
        analyzer.close()
        prep.close()
    return {k: tuple(v) if isinstance(v, list) else v for k, v in out.items()}


def _update(acc, box, other, score, other_score) -> None:
    acc[0] = max(acc[0], float(np.abs(np.asarray(box, float) - other).max()))
    acc[1] = max(acc[1], abs(float(score) - float(other_score)))
