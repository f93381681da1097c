"""Faces in frames: detection, landmarks, head-pose ratios, IR-50 input, synthetic expressions.

* :class:`FaceAnalyzer` finds the largest face with MediaPipe BlazeFace short range
  (the FERGI paper's detector) and its 478 FaceMesh landmarks (refined iris points).
* :func:`pose_ratios` (FaceMesh points) and :func:`pose_ratios_68` (68-point landmarks)
  compute the pitch and yaw indicative ratios of Supp. C of the paper, both in the
  oriented face frame of the authors' ``align_face`` (:func:`oriented_pose_ratios`,
  :func:`face_axes`; the point mapping is documented in ``fergi.face._pose``).
* :func:`align_face`, :func:`enhance_contrast` and :func:`preprocess_face` prepare the
  112x112 input of the IR-50 AU model (Supp. B.2).
* :class:`AuthorsPreprocessor` is the FERGI authors' own AU-model preprocessing,
  exactly (BlazeFace Tasks API, margin crop, MobileFaceNet 68-point alignment,
  heNlm, padding; ``preprocessing="authors"``), with :func:`load_mobilefacenet`
  reading their landmark weights file (``--landmarks``, or :func:`models_dir`).
* :func:`synthesize_expression` and :func:`write_reaction_video` make believable test
  faces and reaction videos from a photograph with a landmark-driven thin-plate spline.
"""

from fergi.face._align import (
    CROP_MARGINS,
    FACE_SIZE,
    align_face,
    crop_box,
    enhance_contrast,
    preprocess_face,
)
from fergi.face._authors import (
    AUTHORS_MARGINS,
    PREPROCESSINGS,
    AuthorsFace,
    AuthorsPreprocessor,
    align_authors,
    bundled_detector_model,
    compare_detectors,
    henlm,
    margin_crop,
    pad_square,
)
from fergi.face._landmarks import N_LANDMARKS, FaceAnalyzer, FaceObservation, detect_landmarks
from fergi.face._mobilefacenet import (
    LANDMARK_WEIGHTS_NAME,
    build_mobilefacenet,
    landmark_weights_path,
    load_mobilefacenet,
    mean_face_68,
    models_dir,
    save_synthetic_landmark_weights,
)
from fergi.face._pose import (
    LEFT_EYE,
    RIGHT_EYE,
    face_axes,
    oriented_pose_ratios,
    pose_ratios,
    pose_ratios_68,
)
from fergi.face._synthetic import reaction_frames, synthesize_expression, write_reaction_video

__all__ = [
    "AUTHORS_MARGINS",
    "LANDMARK_WEIGHTS_NAME",
    "PREPROCESSINGS",
    "AuthorsFace",
    "AuthorsPreprocessor",
    "align_authors",
    "build_mobilefacenet",
    "bundled_detector_model",
    "compare_detectors",
    "henlm",
    "landmark_weights_path",
    "load_mobilefacenet",
    "margin_crop",
    "mean_face_68",
    "models_dir",
    "pad_square",
    "save_synthetic_landmark_weights",
    "CROP_MARGINS",
    "FACE_SIZE",
    "N_LANDMARKS",
    "FaceAnalyzer",
    "FaceObservation",
    "LEFT_EYE",
    "RIGHT_EYE",
    "align_face",
    "crop_box",
    "detect_landmarks",
    "enhance_contrast",
    "face_axes",
    "oriented_pose_ratios",
    "pose_ratios",
    "pose_ratios_68",
    "preprocess_face",
    "reaction_frames",
    "synthesize_expression",
    "write_reaction_video",
]
