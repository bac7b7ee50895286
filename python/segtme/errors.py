"""Error types shared across the package. The CLI prints ``error: <message>`` for these and
exits with status 2; the gRPC server maps InputError to INVALID_ARGUMENT."""


class SegTMEError(Exception):
    """Base class for errors with a message meant for the user."""


class InputError(SegTMEError, ValueError):
    """Bad user input: corrupt/odd image, wrong array shape, invalid MPP, absurd size, ..."""
