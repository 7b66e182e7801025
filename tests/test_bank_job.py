"""``fedlora train-bank``: what a bank's Job runs, with the bank's own data and its own view of the exchange."""

from __future__ import annotations

import json
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from fedlora.cli import main
from fedlora.config import Config, config_to_yaml, load_config
from fedlora.federation import initialize
from fedlora.runtime import Runtime
from fedlora.store.adapters import load_adapter


def _bank_csv(path: Path, rows: int = 200) -> Path:
    with resources.files("fedlora.data").joinpath("german_credit.csv").open("r", encoding="utf-8") as f:
        pd.read_csv(f, dtype=object).head(rows).to_csv(path, index=False)
    return path


def _consortium(tmp_path: Path, tiny_overrides: list[str]) -> tuple[Config, Path]:
    """The coordinator's config: bank-a's data lives only in bank-a's namespace."""
    exchange = tmp_path / "exchange"
    config = load_config(
        None,
        [
            *tiny_overrides,
            "federation.banks=[{name: bank-a, data: /data/only-bank-a-sees-this.csv}, {name: bank-b}]",
            f"store.uri={exchange}",
        ],
    )
    info = initialize(config, run="r1", runtime=Runtime(config))
    assert "bank-a" not in info["privacy"]  # the coordinator cannot read bank-a's rows
    return config, exchange


def _invoke(env: dict[str, str]) -> Any:
    """Run the bank's Job command; unless the test says otherwise its ledger is a directory of its own."""
    env = {
        "FEDLORA_BANK_LEDGER": tempfile.mkdtemp(prefix="bank-a-ledger-"),
        "FEDLORA_BANK_POLICY": '{"minNoiseMultiplier": 0}',  # the tiny schedule calibrates to σ < 0.5
        **env,
    }
    return CliRunner().invoke(main, ["train-bank", "--run", "r1", "--bank", "bank-a", "--round", "1"], env=env)


def test_train_bank_uses_the_banks_data_and_store_and_is_idempotent(tiny_overrides: list[str], tmp_path: Path) -> None:
    config, exchange = _consortium(tmp_path, tiny_overrides)
    request = config.model_copy(update={"store": config.store.model_copy(update={"uri": "/coordinator/view"})})
    env = {
        "FEDLORA_REQUEST_CONFIG": config_to_yaml(request),
        "FEDLORA_BANK_DATA": str(_bank_csv(tmp_path / "credit.csv")),
        "FEDLORA_STORE_URI": str(exchange),  # the bank's own way to the exchange wins
        "FEDLORA_BANK_LEDGER": str(tmp_path / "bank-a-ledger"),
    }
    result = _invoke(env)
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.output.strip().splitlines()[-1])
    assert outcome["status"] == "ok" and outcome["bank"] == "bank-a" and outcome["round"] == 1
    assert outcome["num_examples"] in (120, 130, 140, 150)  # the train split of its 200 rows, rounded
    assert outcome["update_uri"] == str(exchange / "r1/rounds/0001/updates/bank-a")
    assert 0 < outcome["epsilon"] <= config.privacy.target_epsilon
    privacy = json.loads((exchange / "r1/privacy/bank-a.json").read_text())
    assert privacy["charged_rounds"] == [1]
    assert privacy["plan"]["sample_rate"] == pytest.approx(config.training.batch_size / outcome["num_examples"])
    assert not {"loss", "incoming_val", "examples_seen"} & set(outcome)  # exact metrics stay in the bank
    stored = load_adapter(_store(config), "rounds/0001/updates/bank-a")
    assert stored.meta["bank"] == "bank-a" and stored.meta["num_examples"] == outcome["num_examples"]

    again = _invoke(env)  # a retried Job: the published outcome is returned, nothing is charged twice
    assert again.exit_code == 0
    assert json.loads(again.output.strip().splitlines()[-1]) == outcome
    assert json.loads((exchange / "r1/privacy/bank-a.json").read_text())["charged_rounds"] == [1]
    charges = list((tmp_path / "bank-a-ledger").rglob("charges/r1/0001/*.json"))
    assert len(charges) == 1  # the bank's own ledger holds exactly one charge for the round
    assert not list(exchange.rglob("*.csv"))  # rows never reach the exchange


def _store(config: Config) -> Any:
    from fedlora.store.run import open_run_store

    return open_run_store(config, "r1")


def test_train_bank_without_a_request_exits_2() -> None:
    result = CliRunner().invoke(
        main, ["train-bank", "--run", "r1", "--bank", "bank-a", "--round", "1"], env={"FEDLORA_REQUEST_CONFIG": ""}
    )
    assert result.exit_code == 2
    assert "FEDLORA_REQUEST_CONFIG" in result.output


def test_train_bank_with_a_bad_data_file_exits_1_naming_it(tiny_overrides: list[str], tmp_path: Path) -> None:
    config, exchange = _consortium(tmp_path, tiny_overrides)
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"age_in_years": [30, 40]}).to_csv(bad, index=False)
    result = _invoke({"FEDLORA_REQUEST_CONFIG": config_to_yaml(config), "FEDLORA_BANK_DATA": str(bad)})
    assert result.exit_code == 1
    assert str(bad) in result.output and "bank-a" in result.output
    assert not (exchange / "r1/rounds/0001/updates/bank-a").exists()


def test_train_bank_reads_data_from_the_banks_private_bucket(
    ceph_s3: Any, tiny_overrides: list[str], tmp_path: Path
) -> None:
    config, exchange = _consortium(tmp_path, tiny_overrides)
    access, secret = ceph_s3.create_user("bank-a-data-reader")
    admin = ceph_s3.client()
    admin.create_bucket(Bucket="bank-a-private")
    admin.upload_file(str(_bank_csv(tmp_path / "credit.csv")), "bank-a-private", "2026/credit.csv")
    admin.put_bucket_policy(
        Bucket="bank-a-private",
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"AWS": ["arn:aws:iam:::user/bank-a-data-reader"]},
                        "Action": ["s3:GetObject", "s3:ListBucket"],
                        "Resource": ["arn:aws:s3:::bank-a-private", "arn:aws:s3:::bank-a-private/*"],
                    }
                ],
            }
        ),
    )
    env = {
        "FEDLORA_REQUEST_CONFIG": config_to_yaml(config),
        "FEDLORA_BANK_DATA": "s3://bank-a-private/2026/",
        "FEDLORA_BANK_DATA_ENDPOINT_URL": ceph_s3.endpoint,
        "FEDLORA_BANK_DATA_REGION": ceph_s3.region,
        "FEDLORA_BANK_DATA_AWS_ACCESS_KEY_ID": access,
        "FEDLORA_BANK_DATA_AWS_SECRET_ACCESS_KEY": secret,
    }
    result = _invoke(env)
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.output.strip().splitlines()[-1])
    assert outcome["status"] == "ok" and outcome["num_examples"] in (120, 130, 140, 150)
    assert not list(exchange.rglob("*.csv"))
