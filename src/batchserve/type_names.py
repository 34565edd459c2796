"""The names a service's inputs and outputs may be declared with.

A schema holds one of batchserve's four type names, ``int``, ``float``, ``str`` and ``bool``.
Declarations may also use R's names, as Machine Learning Server's clients send them
(``integer``, ``numeric``, ``character``, ``logical``), and a few other common spellings; the
SDK, the native REST API and the ML Server face all read them through :data:`TYPE_SPELLINGS`.
This module imports nothing heavy, so that the SDK can use it.
"""

from __future__ import annotations

#: batchserve's type names: what a schema holds once declared.
TYPE_NAMES = ("int", "float", "str", "bool")

#: Every accepted spelling of a type name -> batchserve's name.
TYPE_SPELLINGS: dict[str, str] = {
    "int": "int",
    "integer": "int",
    "float": "float",
    "numeric": "float",
    "double": "float",
    "str": "str",
    "character": "str",
    "string": "str",
    "bool": "bool",
    "logical": "bool",
}

#: batchserve's type names in R's spelling (what the ML Server face answers).
R_TYPE_NAMES: dict[str, str] = {
    "int": "integer",
    "float": "numeric",
    "str": "character",
    "bool": "logical",
}

#: For messages: the names to declare a type with.
ACCEPTED = "int, float, str or bool (or R's integer, numeric, character, logical)"
