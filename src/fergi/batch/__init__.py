"""Batch work over many files: feature extraction and scoring on local processes or Ray.

One job model (:class:`ExtractionJob`: one video into one features file) with the
resume, report and ``features_meta.json`` semantics of ``fergi extract``
(:func:`extract_videos`), scoring a folder of images with the baseline scorers
(:func:`score_folder`, ``fergi score``), and two executors:

* :class:`LocalExecutor`: this process or a pool of worker processes;
* :class:`RayExecutor`: a Ray cluster (``pip install 'fergi[ray]'``), one task per
  video, the ``ir50`` estimator and the scorers in (GPU) actors.

>>> from fergi.batch import RayExecutor, extract_videos
>>> extract_videos(["videos/"], "feats/", executor=RayExecutor("auto"))  # doctest: +SKIP

Both executors write byte-identical files.
"""

from fergi.batch._extract import REPORT_COLUMNS, REPORT_NAME, ExtractionResult, extract_videos
from fergi.batch._jobs import FACE_BATCH, ExtractionJob
from fergi.batch._local import LocalExecutor
from fergi.batch._ray import RayExecutor
from fergi.batch._score import score_folder

__all__ = [
    "FACE_BATCH",
    "REPORT_COLUMNS",
    "REPORT_NAME",
    "ExtractionJob",
    "ExtractionResult",
    "LocalExecutor",
    "RayExecutor",
    "extract_videos",
    "score_folder",
]
