"""One configuration for every shell: YAML file, ``--set`` overrides and defaults.

The same dotted names (``privacy.target_epsilon``, ``federation.rounds``, ...) are used in
the YAML config, on the command line (``--set section.key=value``), and later in pipeline
parameters and Helm values. Unknown keys and wrong types are errors that name the key.

Every field's description is the single source of ``fedlora simulate --help``, the pipeline's
parameter docs in the KFP UI and ``docs/configuration.md`` (``scripts/gen_config_docs.py``).
Import from this package; its modules, each importing only those above it:

- :mod:`~fedlora.config.base`: :class:`ConfigError`, the section base, :data:`COLUMN_READING_PRESETS`.
- :mod:`~fedlora.config.data`, :mod:`~fedlora.config.model` (``model``, ``lora``),
  :mod:`~fedlora.config.privacy`, :mod:`~fedlora.config.training`,
  :mod:`~fedlora.config.federation` (``federation``, ``federation.banks[]``) and
  :mod:`~fedlora.config.services` (``tracking``, ``store``, ``kubeflow``, ``output``): one section each.
- :mod:`~fedlora.config.root`: :class:`Config`, all sections and the checks that span them.
- :mod:`~fedlora.config.loading`: YAML and ``--set`` to a :class:`Config` and back.
- :mod:`~fedlora.config.describe`: the ``--help`` field list.
"""

from __future__ import annotations

from fedlora.config.base import COLUMN_READING_PRESETS, ConfigError
from fedlora.config.base import _Section as _Section  # scripts/gen_config_docs.py walks the sections
from fedlora.config.data import DataConfig
from fedlora.config.describe import describe_fields
from fedlora.config.federation import BankConfig, FederationConfig
from fedlora.config.loading import apply_override, config_to_yaml, load_config, load_config_text, set_dotted
from fedlora.config.model import LoraConfig, ModelConfig
from fedlora.config.privacy import PrivacyConfig
from fedlora.config.root import Config
from fedlora.config.services import KubeflowConfig, OutputConfig, StoreConfig, TrackingConfig
from fedlora.config.training import TrainingConfig

__all__ = [
    "COLUMN_READING_PRESETS",
    "BankConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "FederationConfig",
    "KubeflowConfig",
    "LoraConfig",
    "ModelConfig",
    "OutputConfig",
    "PrivacyConfig",
    "StoreConfig",
    "TrackingConfig",
    "TrainingConfig",
    "apply_override",
    "config_to_yaml",
    "describe_fields",
    "load_config",
    "load_config_text",
    "set_dotted",
]
