"""The run's report (``report/index.html``): what a bank's risk team reads.

:func:`write_report` renders it from the run's summary and, in ``fedlora simulate`` only, the
final adapter's pooled test scores (:class:`PooledScores`); in a consortium, from the banks'
DP-released histograms (:func:`latest_released_histograms`). Modules: ``views`` (curves from
either source), ``plots`` (figures), ``tables`` and ``guarantee`` (text), ``page`` (the HTML),
``released`` (reading the DP releases), ``scores`` (scoring in a simulation).
"""

from fedlora.report.page import write_report
from fedlora.report.released import ReleasedHistograms, latest_released_histograms
from fedlora.report.views import PooledScores

__all__ = ["PooledScores", "ReleasedHistograms", "latest_released_histograms", "write_report"]
