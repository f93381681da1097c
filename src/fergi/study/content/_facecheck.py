"""Webcam preview check: is a face visible in a snapshot? (MediaPipe BlazeFace)."""

from __future__ import annotations

import io
import threading

import numpy as np

_lock = threading.Lock()
_detector = None


def face_confidence(image: np.ndarray) -> float:
    """Highest BlazeFace (short range) detection score in an RGB uint8 image, 0.0 when none."""
    global _detector
    with _lock:  # a mediapipe graph is not safe to call from several threads at once
        if _detector is None:
            import mediapipe as mp

            _detector = mp.solutions.face_detection.FaceDetection(
                model_selection=0, min_detection_confidence=0.5
            )
        result = _detector.process(np.ascontiguousarray(image[..., :3]))
    if not result.detections:
        return 0.0
    return float(max(d.score[0] for d in result.detections))


def decode_snapshot(data: bytes) -> np.ndarray:
    """Decode a JPEG/PNG/WebP snapshot into RGB; ValueError when it is not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > 4096 * 4096:
                raise ValueError("snapshot is larger than 4096x4096 pixels")
            return np.asarray(img.convert("RGB"))
    except Image.DecompressionBombError:
        # Raised by open() itself for huge declared sizes, before the check above.
        raise ValueError("snapshot is larger than 4096x4096 pixels") from None
    except ValueError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError) as exc:
        raise ValueError(f"not a readable image ({exc.__class__.__name__})") from None
