"""Run names on Kubeflow: always set by the submitting side, and a KFP job name turned into a valid one.

A run's name keys its folder in the exchange and the banks' ledgers, so it must be a DNS label
(:func:`fedlora.names.check_name`) and two runs must never share one by accident. The pipeline
passes ``{{$.pipeline_job_name}}`` to ``initialize`` as the fallback name, but the KFP backend
resolves that placeholder only from 2.5.0 (``backend/src/v2/driver/driver.go`` 2.5.0:1644, absent
from 2.4.0), and then to the run's *display* name (spaces, capitals, colons; not unique). Hence:

* ``fedlora submit`` names every run itself (:func:`generated_run_name`) when neither the user nor
  the config does, so the placeholder never decides;
* ``initialize`` turns whatever KFP passes into a valid name (:func:`run_name_from_job`) and refuses an
  unresolved placeholder instead of letting every such run share the name ``{{$.pipeline_job_name}}``.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime

from fedlora.config import ConfigError
from fedlora.names import MAX_NAME_LENGTH, check_name

__all__ = ["generated_run_name", "run_name_from_job"]

_INVALID = re.compile(r"[^a-z0-9-]+")


def generated_run_name(now: datetime | None = None, *, suffix: str | None = None) -> str:
    """A fresh run name from the UTC time and a random suffix, e.g. ``fedlora-20261207-061500-ab12``.

    Args:
        now: The time to name the run after (default: now, UTC).
        suffix: The random part (default: 4 hex digits from :mod:`secrets`; two runs started in
            the same second share a name with probability 1/65,536).
    """
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return check_name(f"fedlora-{moment:%Y%m%d-%H%M%S}-{suffix or secrets.token_hex(2)}", kind="run")


def run_name_from_job(job_name: str) -> str:
    """The run name for a KFP job name: lowercase, other characters to ``-``, at most 63 characters.

    Raises:
        ConfigError: ``job_name`` is an unresolved placeholder (contains ``{{``: a KFP backend before
            2.5 and a run without ``output_run_name``) or has no letter or digit.
    """
    if "{{" in job_name:
        raise ConfigError(
            f"the KFP backend passed the unresolved placeholder {job_name[:40]!r} as the run's name (KFP before "
            "2.5 does not resolve it): nothing was written. Set the run parameter output_run_name, or start the "
            "run with `fedlora submit`, which names every run"
        )
    name = _INVALID.sub("-", job_name.lower()).strip("-")
    name = re.sub(r"-{2,}", "-", name)[:MAX_NAME_LENGTH].rstrip("-")
    if not name:
        raise ConfigError(f"the KFP job name {job_name[:40]!r} has no letter or digit to name the run after")
    return check_name(name, kind="run")
