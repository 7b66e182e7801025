"""The bank's own privacy policy: what a training request may ask of the bank, and what may leave it.

The consortium's request (the run's config) can *ask* for a privacy setting; only the bank's
policy, set in the bank's own Helm values and read by the bank's Job from
``FEDLORA_BANK_POLICY``, decides. A request outside the policy is refused with the rule it
breaks and nothing is trained (the analogue of NVIDIA FLARE's site privacy policies, but
enforced by the code in the bank's Job, which the coordinator cannot reach).

Keys are camelCase, as in the chart's ``privacyPolicy`` values (``maxEpsilonPerRun``); the
snake_case field names are accepted too.
"""

from __future__ import annotations

import json
import math
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from fedlora.config import Config
from fedlora.errors import FedLoRAError


class PolicyError(FedLoRAError, ValueError):
    """The bank's policy itself is missing or invalid (a deployment error of the bank)."""


class BankPolicy(BaseModel):
    """What the bank allows. Every request is checked against it before anything is read or trained."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)

    max_epsilon_per_run: float = Field(8.0, gt=0, description="Largest ε a run may spend on this bank's rows.")
    lifetime_epsilon: float = Field(
        16.0, gt=0, description="Cap on ε composed over every run ever trained on the same rows (the dataset's ledger)."
    )
    max_delta: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Largest δ a request may use and the δ of the lifetime ledger; None = 1/(10·n) for the "
        "bank's declared training count n (enforced: a request above it is refused), and always δ < 1/n.",
    )
    min_noise_multiplier: float = Field(
        0.5, ge=0, description="Smallest σ the bank accepts, whatever the ε arithmetic says."
    )
    accountant: Literal["prv", "rdp"] = Field("prv", description="The accountant the bank trusts.")
    release_metrics: bool = Field(
        False, description="Release DP-noised evaluation histograms (charged); off = no metric leaves the bank."
    )
    evaluation_epsilon: float = Field(0.5, gt=0, description="ε reserved for the evaluation releases of one run.")

    @classmethod
    def from_text(cls, text: str, *, source: str = "FEDLORA_BANK_POLICY") -> BankPolicy:
        """Parse the policy from JSON or YAML text.

        Raises:
            PolicyError: the text is not a mapping or a key/value is invalid.

        """
        try:
            data = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise PolicyError(f"{source}: not valid JSON/YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise PolicyError(f"{source}: must be a mapping of policy keys")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise PolicyError(f"{source}: invalid bank privacy policy: {problems}") from exc

    @classmethod
    def for_simulation(cls, config: Config, bank: str) -> BankPolicy:
        """The policy of a bank in ``fedlora simulate``: the user is every bank, the config is its policy."""
        target = config.target_epsilon_for(bank)
        return cls(
            max_epsilon_per_run=target,
            lifetime_epsilon=math.inf,
            max_delta=config.privacy.delta,  # the user is every bank: the config's δ is the bank's
            min_noise_multiplier=0.0,
            accountant=config.privacy.accountant,
            release_metrics=config.privacy.release_metrics,
            evaluation_epsilon=config.privacy.evaluation_epsilon,
        )

    def refusals(self, config: Config, bank: str, *, job: bool) -> list[str]:
        """Every rule of this policy that the request ``config`` breaks for ``bank`` (empty = allowed).

        Args:
            config: the request (the run's config).
            bank: this bank's name in the request.
            job: True in a bank's Job (where a seeded noise source is always refused).

        """
        p = config.privacy
        reasons: list[str] = []
        if not p.enabled:
            reasons.append("the request turns privacy off (privacy.enabled=false); this bank trains only with DP")
        target = config.target_epsilon_for(bank)
        if target > self.max_epsilon_per_run:
            reasons.append(
                f"the request asks for ε={target:g} for this run; the bank's policy allows at most "
                f"maxEpsilonPerRun={self.max_epsilon_per_run:g}"
            )
        if p.delta is not None and self.max_delta is not None and p.delta > self.max_delta:
            reasons.append(
                f"the request asks for δ={p.delta:g}; the bank's policy allows at most maxDelta={self.max_delta:g}"
            )
        if p.noise_multiplier is not None and p.noise_multiplier < self.min_noise_multiplier:
            reasons.append(
                f"the request fixes σ={p.noise_multiplier:g}; the bank's policy requires "
                f"minNoiseMultiplier ≥ {self.min_noise_multiplier:g}"
            )
        if p.accountant != self.accountant:
            reasons.append(
                f"the request asks for the {p.accountant} accountant; the bank accounts with {self.accountant}"
            )
        if job and p.insecure_seeded_noise:
            reasons.append(
                "the request asks for seeded (replayable) noise (privacy.insecure_seeded_noise=true); a bank's Job "
                "draws noise only from the OS CSPRNG"
            )
        return reasons
