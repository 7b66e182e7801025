"""Each bank's privacy guarantee in one plain sentence, from the accountant's numbers already in the summary.

Nothing is computed here: ε and δ are the bank's published privacy report (``summary.privacy``,
from its ledger's accountant) or, when a bank published none, the run ε the round records
carry. The lifetime clause depends on who keeps the ledger: where one process plays every bank
(``fedlora simulate``, inline runs) each bank's ledger lives in the run's store and starts with
the run; in a consortium it lives in the bank's own storage and is not published.
"""

from __future__ import annotations

import math
from typing import Any

from fedlora.records import RunSummary

__all__ = ["format_delta", "guarantee_sentences"]


def format_delta(delta: float) -> str:
    """δ as people write it, to two significant digits: ``1e-4``, ``1.1e-4``, ``3.6e-5``, ``0.01``."""
    if delta >= 1e-3:
        return f"{delta:g}"
    mantissa, exponent = f"{delta:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def _epsilon(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:.2f}"


def _sentence(bank: str, info: dict[str, Any], *, one_process: bool) -> str:
    spent = float(info["epsilon"])
    target = info.get("target_epsilon")
    of_target = f", of the {_epsilon(float(target))} this run may spend" if target is not None else ""
    lifetime = (
        "one process plays every bank here, so its ledger starts with this run and has no lifetime cap"
        if one_process
        else "its lifetime ε is in its own ledger, which only the bank reads"
    )
    return (
        f"{bank}: (ε, δ) = ({_epsilon(spent)}, {format_delta(float(info['delta']))}) per customer record "
        f"over this run{of_target}; {lifetime}."
    )


def guarantee_sentences(summary: RunSummary, *, one_process: bool) -> dict[str, str]:
    """One sentence per bank: its (ε, δ) per customer record over this run, its target, and where its lifetime ε is.

    Args:
        summary: The run's summary.
        one_process: Whether one process played every bank (simulation or inline run: the
            ledgers are the run's); otherwise the banks keep their ledgers.

    """
    sentences: dict[str, str] = {}
    for bank, epsilon in summary.final.epsilon.items():
        info = summary.privacy.get(bank)
        if info is not None:
            sentences[bank] = _sentence(bank, info, one_process=one_process)
        elif epsilon is None:
            sentences[bank] = (
                f"{bank}: trained without differential privacy in this run: no guarantee for its customers."
            )
        else:
            sentences[bank] = (
                f"{bank}: ε = {_epsilon(epsilon)} per customer record over this run, by the round records; "
                "the bank published no privacy report, so its δ is not known here."
            )
    return sentences
