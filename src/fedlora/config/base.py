"""What every config section shares: the error a bad config raises, the section base, the column presets.

Every other module of :mod:`fedlora.config` imports this one and it imports none of them, so the
section modules stay independent of each other and of the loading code.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from fedlora.errors import FedLoRAError


class ConfigError(FedLoRAError, ValueError):
    """A configuration file or override is invalid; the message names the key and value."""


COLUMN_READING_PRESETS = ("minilm", "tiny-bert")
"""Model presets whose head can read the row's columns beside the text (``model.schema_features``): the
encoders with a mean-pooled head (:class:`fedlora.model.heads.MeanPooledBertForSequenceClassification`)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
