"""The errors retouch raises for bad input: one base class, one subclass per kind of input.

Every message is one line naming what is wrong and why, so a shell can print it as it is and exit
with code 2 (`isinstance(e, InputError)`), and a web form can show it beside the field.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user: an image, a prompt, a setting, a model, a file to write."""


class ImageError(InputError):
    """An image that cannot be read or used: missing, truncated, transparent, too small or large."""


class PromptError(InputError):
    """A prompt that cannot be used: empty where text is required, or longer than the encoder."""


class SettingError(InputError):
    """A setting out of its range, named, with the range."""


class ModelError(InputError):
    """A model that cannot be loaded: no such folder, not a diffusers folder, unpickled weights."""


class OutputError(InputError):
    """An output that cannot be written: the input itself, a folder, an unwritable place."""


class InversionError(InputError):
    """A saved inversion that cannot be used: unreadable, tampered, or made with another model."""
