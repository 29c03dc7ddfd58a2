"""The house rule for bad input, as a test helper: a NanodiffError whose message is one line."""

import pytest

from nanodiffusion.errors import NanodiffError


def error_of(call, *args) -> str:
    """The message of the NanodiffError that call(*args) raises; it must be one line."""
    with pytest.raises(NanodiffError) as error:
        call(*args)
    message = str(error.value)
    assert "\n" not in message, message
    return message
