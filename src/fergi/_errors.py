"""The one exception type that signals a user's mistake."""


class FergiError(Exception):
    """A problem with the user's input, reported as one line without a traceback.

    The message names the file (or option) and the problem, e.g.
    ``data/001/session_1/reaction_clip_1_features.csv: missing column 'AU12'``.
    The command-line interface prints it as ``error: <message>`` and exits with
    status 2.
    """
