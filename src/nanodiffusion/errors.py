"""The one exception type users see: the CLI prints its message on one line and exits non-zero."""


class NanodiffError(Exception):
    """Bad input or a state nanodiffusion cannot continue from; the message says what to do."""
