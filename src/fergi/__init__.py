"""fergi: preference labels from spontaneous facial reactions to generated images.

fergi implements and extends the FERGI paper (Feng, Ma and de Sa): a web study that
records people's faces while they look at generated images, per-frame facial action
unit (AU) features, reaction statistics and pairwise preference annotation.

The package is organised by pipeline stage:

``fergi.datasets``
    Fetch and load the public FERGI release (or a study exported by fergi).
``fergi.video``, ``fergi.face``, ``fergi.au``
    From a face video to the per-frame feature table.
``fergi.features``
    Frame and clip validity, AU activation values, participant screening.
``fergi.stats``, ``fergi.plots``
    The statistics and figures of Sec. 6.1.
``fergi.preference``
    AUcomb valence, baselines, ensembles, FAU-Net and LOPO evaluation (Sec. 6.2).
``fergi.study``
    The web study app.
"""

from fergi._errors import FergiError

__version__ = "0.1.0"

__all__ = ["FergiError", "__version__"]
