"""Names that come from a request are identifiers, never paths: one validator for every entry point.

A run, a bank and a dataset identity are used as store keys (``<run>/rounds/…``,
``datasets/<id>/charges/<run>/…``), Kubernetes object names and label values. A name that is a
path (``../x``, ``a/b``) would let a request write outside its prefix, e.g. a charge the bank's
ledger never lists. So every entry (CLI, bank agent, pipeline parameters, config) checks names
with :func:`check_name`: the DNS-label rule of Kubernetes (RFC 1123: lowercase letters, digits
and ``-``, starting and ending with a letter or digit, at most 63 characters). The message names
the kind of name and the rule, and quotes the value only through :func:`repr` of at most
63 characters (a name is a setting, not a data value).
"""

from __future__ import annotations

import re

from fedlora.errors import FedLoRAError

__all__ = ["MAX_NAME_LENGTH", "NAME_PATTERN", "InvalidName", "check_name", "is_name"]

MAX_NAME_LENGTH = 63
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
_NAME = re.compile(NAME_PATTERN)


class InvalidName(FedLoRAError, ValueError):  # noqa: N818 (a refusal of input)
    """A run, bank or dataset name is not a DNS label."""


def is_name(value: object) -> bool:
    """Whether ``value`` is a DNS label (RFC 1123, at most 63 characters)."""
    return isinstance(value, str) and len(value) <= MAX_NAME_LENGTH and _NAME.fullmatch(value) is not None


def check_name(value: object, *, kind: str) -> str:
    """Return ``value`` when it is a DNS label, else raise naming ``kind`` and the rule.

    Args:
        value: The name from a request, a flag or a config.
        kind: What it names (``"run"``, ``"bank"``, ``"dataset"``), for the message.

    Raises:
        InvalidName: ``value`` is not a lowercase DNS label of at most 63 characters.

    """
    if is_name(value):
        assert isinstance(value, str)
        return value
    shown = repr(value)[: MAX_NAME_LENGTH + 2] if isinstance(value, str) else type(value).__name__
    raise InvalidName(
        f"{kind} name {shown} is not an identifier: use 1-{MAX_NAME_LENGTH} lowercase letters, digits and '-', "
        "starting and ending with a letter or digit (no '/', '.', '..' or spaces)"
    )
