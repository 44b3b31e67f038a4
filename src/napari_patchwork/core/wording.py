"""Core messages in a front end's words: the one renaming of argument names in errors.

The core names arguments as the API spells them (``patch_size``); the CLI says
``--patch-size`` and the widgets "patch size". Both rename through these two functions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping


def reworded_text(text: str, words: Mapping[str, str]) -> str:
    """``text`` with each whole-word ``words`` key replaced by its value.

    Examples
    --------
    >>> reworded_text("patch_size must be positive", {"patch_size": "--patch-size"})
    '--patch-size must be positive'

    Rewording twice changes nothing (a replacement that extends its key is not extended again):

    >>> once = reworded_text("annotations are empty", {"annotations": "annotations layer"})
    >>> once, reworded_text(once, {"annotations": "annotations layer"})
    ('annotations layer are empty', 'annotations layer are empty')
    """
    for name, replacement in words.items():
        rest = replacement[len(name) :] if replacement.startswith(name) else ""
        done = f"(?!{re.escape(rest)})" if rest else ""
        text = re.sub(rf"\b{re.escape(name)}\b{done}", replacement, text)
    return text


def reworded(error: BaseException, words: Mapping[str, str]) -> BaseException:
    """The same error, its message reworded (``ValueError`` if its type takes no message).

    Examples
    --------
    >>> str(reworded(ValueError("batch_size must be positive"), {"batch_size": "batch size"}))
    'batch size must be positive'
    """
    message = reworded_text(str(error), words)
    if message == str(error):
        return error
    try:
        return type(error)(message)
    except TypeError:
        return ValueError(message)
