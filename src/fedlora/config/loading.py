"""From YAML to a validated :class:`~fedlora.config.root.Config` and back: files, built-in configs, ``--set``.

Errors are :class:`~fedlora.config.base.ConfigError` naming the source (file, built-in config, text)
and each bad key; a YAML syntax error gives its position only, never the text around it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fedlora.config.base import ConfigError
from fedlora.config.root import Config
from fedlora.configs import builtin_config_names, builtin_config_text


def _parse_value(text: str) -> Any:
    """Parse an override value with YAML rules (``3`` -> int, ``true`` -> bool, ``[a, b]`` -> list)."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply one ``section.key=value`` override to a raw config tree, in place.

    Raises:
        ConfigError: if the assignment has no ``=`` or an empty key.

    """
    if "=" not in assignment:
        raise ConfigError(f"--set expects section.key=value, got {assignment!r}")
    key, _, raw = assignment.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set has an empty key in {assignment!r}")
    set_dotted(tree, parts, _parse_value(raw), name=f"--set {key}")


def set_dotted(tree: dict[str, Any], path: str | list[str], value: Any, *, name: str | None = None) -> None:
    """Set ``tree[a][b][c] = value`` for the dotted ``path`` ``a.b.c``, creating missing sections, in place.

    Args:
        tree: A raw config tree (parsed YAML).
        path: The dotted name, or its parts.
        value: The new value.
        name: How errors name the setting (default: the dotted path).

    Raises:
        ConfigError: a part of the path names a value, not a section.

    """
    parts = path.split(".") if isinstance(path, str) else path
    name = name if name is not None else ".".join(parts)
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{name}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        value = e.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  {loc or '<root>'}: {e['msg']}{shown}")
    return "\n".join(lines)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and where (line, column), without quoting the text around it."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def _parse_tree(text: str, source: str) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:  # the position and the problem only: the text may be a data file given by mistake
        raise ConfigError(f"config {source} is not valid YAML: {_yaml_problem(exc)}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config {source} must hold a mapping at the top level (got a {type(loaded).__name__})")
    return loaded


def _validate(tree: dict[str, Any], source: str, overrides: list[str] | tuple[str, ...]) -> Config:
    """Apply ``--set`` overrides to ``tree`` and validate it; errors name ``source`` and each bad key."""
    for assignment in overrides:
        apply_override(tree, assignment)
    if overrides:
        source += " + --set"
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source)) from exc


def load_config_text(text: str, *, source: str = "<text>", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Validate a config given as YAML text (a stored run config, a pipeline parameter)."""
    return _validate(_parse_tree(text, source), source, overrides)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a config from YAML (optional), apply ``--set`` overrides, validate.

    ``path`` is a YAML file or, when no file of that name exists, the name of a built-in config
    (:mod:`fedlora.configs`: ``german_credit``, ``taiwan_full``).

    Raises:
        ConfigError: on unreadable YAML, unknown keys or wrong types; the message names them.

    """
    if path is None:
        return _validate({}, "defaults", overrides)
    p = Path(path)
    builtin = None if p.is_file() else builtin_config_text(str(path))
    if builtin is not None:
        return load_config_text(builtin, source=f"built-in config {path}", overrides=overrides)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        names = ", ".join(builtin_config_names())
        raise ConfigError(f"config file not found: {p} (built-in configs: {names})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid UTF-8 text: {exc}") from exc
    return _validate(_parse_tree(text, f"file {p}"), str(p), overrides)


def config_to_yaml(config: Config) -> str:
    """Serialize a resolved config back to YAML (round-trips through :func:`load_config`)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
