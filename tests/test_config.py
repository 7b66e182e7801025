from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedlora.config import Config, ConfigError, config_to_yaml, describe_fields, load_config
from fedlora.configs import builtin_config_names

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_embedded_default() -> None:
    config = load_config()
    assert config.model.name == "minilm"
    assert (config.data.dataset, config.data.max_rows) == ("taiwan_credit", 4000)
    assert load_config(None, ["data.max_rows=null"]).data.max_rows is None  # every row
    assert config.model.schema_features and config.training.batch_size == 256
    assert [b.name for b in config.federation.banks] == ["bank-a", "bank-b", "bank-c"]
    assert config.privacy.enabled and config.privacy.target_epsilon == 8.0
    assert config.privacy.accountant == "prv"


def test_default_columns_turn_off_where_the_head_cannot_read_them() -> None:
    assert load_config(None, ["data.dataset=german_credit"]).model.schema_features  # both schemas list categories
    assert not load_config(None, ["model.name=tiny-llama"]).model.schema_features  # a decoder: no mean-pooled head
    explicit = load_config(None, ["model.name=tiny-llama", "model.schema_features=true"])
    assert explicit.model.schema_features  # asked for: kept, and refused with its reason when the model loads


def test_set_overrides_parse_yaml_scalars_and_lists() -> None:
    config = load_config(
        None,
        ["privacy.target_epsilon=3", "privacy.enabled=false", "federation.banks=[{name: x}, {name: y}]", "seed=7"],
    )
    assert config.privacy.target_epsilon == 3.0
    assert config.privacy.enabled is False
    assert [b.name for b in config.federation.banks] == ["x", "y"]
    assert config.seed == 7


def test_yaml_file_and_override_precedence(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("privacy:\n  target_epsilon: 2\nlora:\n  rank: 4\n", encoding="utf-8")
    config = load_config(path, ["lora.rank=16"])
    assert config.privacy.target_epsilon == 2.0
    assert config.lora.rank == 16


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    config = load_config(None, ["lora.ffa=true", "model.quantization=4"])
    path = tmp_path / "again.yaml"
    path.write_text(config_to_yaml(config), encoding="utf-8")
    assert load_config(path) == config


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("privacy.target_epsilonn=3", "privacy.target_epsilonn"),
        ("privacy.target_epsilon=-1", "privacy.target_epsilon"),
        ("privacy.target_epsilon=0", "privacy.target_epsilon"),
        ("privacy.delta=1.5", "privacy.delta"),
        ("federation.rounds=many", "federation.rounds"),
        ("model.quantization=3", "model.quantization"),
        ("federation.banks=[{name: A_B}]", "federation.banks.0.name"),
        ("federation.banks=[{name: a}, {name: a}]", "unique"),
        ("federation.min_banks=9", "min_banks"),
        ("data.partition=random", "data.partition"),
    ],
)
def test_bad_values_name_the_key(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert fragment in str(info.value)


def test_override_without_equals_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        load_config(None, ["privacy.target_epsilon"])


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("privacy: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


def test_every_field_is_described() -> None:
    rows = describe_fields()
    names = {name for name, _, _ in rows}
    assert {"privacy.target_epsilon", "federation.fraction_fit", "lora.ffa", "model.quantization"} <= names
    assert all(description for _, _, description in rows)
    assert len(rows) == len(names)
    assert isinstance(Config(), Config)


def test_a_banks_own_epsilon_and_batch_override_the_consortium_defaults() -> None:
    banks = "federation.banks=[{name: a, target_epsilon: 3, batch_size: 16}, {name: b}]"
    config = load_config(None, [banks, "privacy.target_epsilon=8", "training.batch_size=64"])
    assert [config.target_epsilon_for(b) for b in ("a", "b")] == [3.0, 8.0]
    assert [config.training_for(b).batch_size for b in ("a", "b")] == [16, 64]
    assert config.training_for("a").learning_rate == config.training.learning_rate  # only the batch is the bank's


def _measured_config(result: str) -> Config:
    """The config a benchmark result was measured with: its --config file (if any) and its overrides."""
    stored = json.loads((REPO / "benchmarks" / "results" / result).read_text(encoding="utf-8"))
    path = REPO / stored["config"] if stored.get("config") else None
    return load_config(path, stored["overrides"])


def test_builtin_german_credit_is_the_measured_german_schedule() -> None:
    """``--config german_credit`` is the configuration behind the German rows of benchmarks/README.md."""
    builtin = load_config("german_credit")
    assert builtin.model_dump() == _measured_config("german_columns_b128_r10s3_lr2_eps8_seed0.json").model_dump()
    assert (builtin.training.batch_size, builtin.federation.rounds, builtin.training.local_steps) == (128, 10, 3)


def test_builtin_taiwan_full_is_the_measured_full_data_schedule() -> None:
    """``--config taiwan_full`` plus the benchmark's label-skew overrides is the full-data run measured."""
    measured = _measured_config("taiwan30000_dirichlet_columns_b512_r10_eps3_seed0.json")
    skew = ["data.partition=dirichlet", "data.dirichlet_alpha=0.5"]
    assert load_config("taiwan_full", skew).model_dump() == measured.model_dump()
    assert load_config("taiwan_full").data.max_rows is None


def test_builtin_config_names_and_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert builtin_config_names() == ["finance_sentiment", "german_credit", "taiwan_full"]
    with pytest.raises(
        ConfigError, match=r"not found: nope \(built-in configs: finance_sentiment, german_credit, taiwan_full\)"
    ):
        load_config("nope")
    # A file of that name in the working directory wins over the built-in config.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "german_credit").write_text("seed: 7\n", encoding="utf-8")
    own = load_config("german_credit")
    assert (own.seed, own.data.dataset) == (7, load_config(None).data.dataset)
    with pytest.raises(ConfigError, match="built-in config taiwan_full"):
        load_config("taiwan_full", ["training.batch_size=0"])
