"""Built-in configs: the measured schedules of ``benchmarks/README.md``, by name.

``--config NAME`` loads ``NAME.yaml`` from this package when no file called ``NAME`` exists, so a
schedule that was chosen on validation data and measured lives in one file instead of a row of
``--set`` flags repeated in the README, ``--help`` and the benchmarks.
"""

from __future__ import annotations

from importlib import resources

__all__ = ["builtin_config_names", "builtin_config_text"]

_SUFFIX = ".yaml"


def builtin_config_names() -> list[str]:
    """Names of the built-in configs, sorted (each is ``<name>.yaml`` in this package)."""
    entries = resources.files(__package__).iterdir()
    return sorted(entry.name.removesuffix(_SUFFIX) for entry in entries if entry.name.endswith(_SUFFIX))


def builtin_config_text(name: str) -> str | None:
    """The YAML text of the built-in config ``name``, or ``None`` when there is none by that name."""
    if name not in builtin_config_names():
        return None
    return resources.files(__package__).joinpath(name + _SUFFIX).read_text(encoding="utf-8")
