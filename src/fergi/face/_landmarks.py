"""Face detection (MediaPipe BlazeFace short range) and FaceMesh landmarks.

The FERGI paper detects and crops the largest face with MediaPipe's BlazeFace
short-range model (``model_selection=0``); its score is the release's
``face_detection_confidence_score``. Landmarks come from MediaPipe FaceMesh with
``refine_landmarks=True`` (468 mesh points + 10 iris points = 478).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import numpy as np

from fergi._errors import FergiError

logger = logging.getLogger(__name__)

#: Number of FaceMesh landmarks with the refined iris model.
N_LANDMARKS = 478

# MediaPipe's FaceMesh graph; besides landmarks it outputs the BlazeFace short-range
# detections it ran on the whole frame, so one graph call gives both.
_FRONT_GRAPH = "mediapipe/modules/face_landmark/face_landmark_front_cpu.binarypb"


def _flush_c_stdio() -> None:
    # The C library may buffer what MediaPipe wrote; flush it while fd 2 is /dev/null.
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the C++ start-up chatter of MediaPipe/TFLite (written straight to fd 2).

    Only wraps graph creation and the first frame, where MediaPipe prints its
    informational warnings; Python-level errors still propagate as exceptions.
    """
    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr (e.g. some embedded interpreters)
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            finally:
                _flush_c_stdio()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


@dataclass
class FaceObservation:
    """What the analyser found in one frame.

    Attributes
    ----------
    score : float
        BlazeFace confidence of the largest face (0.0 when no face).
    box : numpy.ndarray or None
        ``(x0, y0, x1, y1)`` of the largest face in frame pixels.
    landmarks : numpy.ndarray or None
        ``(478, 3)`` FaceMesh landmarks in frame pixels (``z`` in the same units as
        ``x``), or None when no face or the mesh failed.
    """

    score: float
    box: np.ndarray | None
    landmarks: np.ndarray | None


class FaceAnalyzer:
    """BlazeFace detection of the largest face and its FaceMesh landmarks, per frame.

    One MediaPipe graph (FaceMesh's ``face_landmark_front_cpu``) runs BlazeFace short
    range on the whole frame, then the attention FaceMesh model (478 points, refined
    iris) in the region of each detected face, so detection and landmarks cost one
    call. The largest detected face is kept.

    Parameters
    ----------
    min_detection_confidence : float, default 0.5
        Faces below this BlazeFace score are ignored (the graph's own threshold is
        MediaPipe's default, 0.5, so lower values have no effect).
    max_faces : int, default 4
        Faces analysed per frame; the largest of the ``max_faces`` best-scored
        detections is returned.
    tracking : bool, default False
        Let FaceMesh reuse the previous frame's landmarks as its region (video mode).
        Off by default: in video mode the landmarks of a perfectly still face wander
        by about 0.2 px a frame (0.01 px here), noise the size of a faint AU.

    Notes
    -----
    Creating the MediaPipe graph costs time: create one analyser per process and
    reuse it (it is created lazily, so an analyser can be sent to a worker process).
    """

    def __init__(
        self, *, min_detection_confidence: float = 0.5, max_faces: int = 4, tracking: bool = False
    ):
        self.min_detection_confidence = float(min_detection_confidence)
        self.max_faces = int(max_faces)
        self.tracking = bool(tracking)
        self._graph = None
        self._warm = False
        #: accumulated seconds in the MediaPipe graph, for benchmarks
        self.timings = {"face": 0.0}

    def _get_graph(self):
        if self._graph is None:
            with _quiet_stderr():
                from mediapipe.python.solution_base import SolutionBase

                self._graph = self._make_graph(SolutionBase)
            self._warm = False
        return self._graph

    def _make_graph(self, solution_base):
        return solution_base(
            binary_graph_path=_FRONT_GRAPH,
            side_inputs={
                "num_faces": self.max_faces,
                "with_attention": True,
                "use_prev_landmarks": self.tracking,
            },
            outputs=["multi_face_landmarks", "face_detections"],
        )

    def reset(self) -> None:
        """Forget the tracking state (only matters with ``tracking=True``)."""
        if self.tracking and self._graph is not None:
            self._graph.reset()

    def close(self) -> None:
        """Release the MediaPipe graph."""
        if self._graph is not None:
            self._graph.close()
            self._graph = None

    def __enter__(self) -> FaceAnalyzer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_graph"] = None
        return state

    def process(self, image: np.ndarray) -> FaceObservation:
        """Detect the largest face of an RGB uint8 frame and measure its landmarks."""
        import time

        t = time.perf_counter()
        h, w = image.shape[:2]
        graph = self._get_graph()
        frame = {"image": np.ascontiguousarray(image[..., :3])}
        if self._warm:
            result = graph.process(frame)
        else:
            with _quiet_stderr():
                result = graph.process(frame)
            self._warm = True
        self.timings["face"] += time.perf_counter() - t
        best, box = 0.0, None
        for det in result.face_detections or ():
            score = float(det.score[0]) if det.score else 0.0
            if score < self.min_detection_confidence:
                continue
            bb = det.location_data.relative_bounding_box
            candidate = np.array(
                [bb.xmin * w, bb.ymin * h, (bb.xmin + bb.width) * w, (bb.ymin + bb.height) * h]
            )
            area = (candidate[2] - candidate[0]) * (candidate[3] - candidate[1])
            if box is None or area > (box[2] - box[0]) * (box[3] - box[1]):
                best, box = score, candidate
        if box is None:
            return FaceObservation(0.0, None, None)
        # The landmark sets follow the detections, but some may be missing: take the
        # set whose centre lies in the chosen box, nearest to its centre.
        centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
        landmarks, best_dist = None, np.inf
        for face in result.multi_face_landmarks or ():
            pts = np.fromiter(
                (c for p in face.landmark for c in (p.x, p.y, p.z)),
                dtype=np.float64,
                count=3 * len(face.landmark),
            ).reshape(-1, 3)
            pts[:, 0] *= w
            pts[:, 1] *= h
            pts[:, 2] *= w  # MediaPipe scales z like x
            c = pts[:, :2].mean(axis=0)
            inside = box[0] <= c[0] <= box[2] and box[1] <= c[1] <= box[3]
            dist = float(np.hypot(*(c - centre)))
            if inside and dist < best_dist:
                landmarks, best_dist = pts, dist
        return FaceObservation(best, box, landmarks)

    def detect(self, image: np.ndarray) -> tuple[float, np.ndarray | None]:
        """Largest face of an RGB uint8 frame: ``(score, box)`` or ``(0.0, None)``."""
        obs = self.process(image)
        return obs.score, obs.box


_STATIC: dict[str, FaceAnalyzer] = {}


def detect_landmarks(image: np.ndarray) -> np.ndarray:
    """FaceMesh landmarks (478, 3) in pixels of the largest face of a still RGB image.

    Raises
    ------
    fergi.FergiError
        No face found.
    """
    analyzer = _STATIC.setdefault("static", FaceAnalyzer())
    obs = analyzer.process(np.ascontiguousarray(image[..., :3]))
    if obs.landmarks is None:
        raise FergiError("image: no face found")
    return obs.landmarks
