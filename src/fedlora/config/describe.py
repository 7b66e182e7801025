"""The field list of ``fedlora simulate --help``: every field's dotted name, default and description."""

from __future__ import annotations

from pydantic import BaseModel

from fedlora.config.base import _Section
from fedlora.config.root import Config


def describe_fields(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """List ``(dotted name, default, description)`` of every config field, for ``--help``."""
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, _Section):
            rows.extend(describe_fields(annotation, prefix=f"{dotted}."))
            continue
        default = ("3 banks" if name == "banks" else "…") if field.default_factory is not None else repr(field.default)
        rows.append((dotted, default, field.description or ""))
    return rows
