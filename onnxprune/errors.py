"""The one exception type for mistakes a user can fix (bad paths, bad data, bad options).

The CLI turns it into a one-line message and a non-zero exit; anything else is a bug and
keeps its traceback.
"""


class OnnxPruneError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it."""


class InternalError(Exception):
    """A bug in onnxprune, caught by one of its own checks before anything is written (a model
    it built that onnxruntime rejects, a surgery that changed what the kept channels compute).
    Deliberately not an OnnxPruneError: it keeps its traceback, and the message says it is ours."""

    def __init__(self, message: str):
        super().__init__(f"internal error (a bug in onnxprune, not in your model; nothing was written): {message}")


class NothingToPrune(OnnxPruneError):
    """The model has no prunable channel group (the CLI exits with its own code, 3)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, for one-line user errors."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
