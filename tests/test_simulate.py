from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from fedlora import local_round as local_round_module
from fedlora.config import Config, load_config
from fedlora.simulate import SimulationError, simulate
from helpers import run_cli as _run_cli
from helpers import set_args as _sets


def test_cli_simulate_writes_summary_run_dir_and_report(tiny_overrides: list[str], tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    code, output = _run_cli(["simulate", *_sets(tiny_overrides), "--json", str(out)])
    assert code == 0, output
    summary = json.loads(out.read_text())
    run_dir = Path(summary["run_dir"])
    banks = ["bank-a", "bank-b", "bank-c"]
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    for record in summary["rounds"]:
        assert 0.0 <= record["auc"] <= 1.0
        assert set(record["epsilon"]) == set(banks)
        assert record["banks"] == banks
        assert (run_dir / f"rounds/{record['round']:04d}/MANIFEST.json").exists()
        assert (run_dir / f"rounds/{record['round']:04d}/global/adapter.safetensors").exists()
    final = summary["final"]
    assert set(final["epsilon"]) == set(banks)
    assert all(0 < e <= 8.0 for e in final["epsilon"].values())
    assert Path(final["adapter"]).exists() and (Path(final["peft_adapter"]) / "adapter_config.json").exists()
    for bank in banks:
        info = summary["privacy"][bank]
        assert info["steps"] == 4  # 2 rounds x 2 local steps, all rounds together
        assert info["accountant"] == "prv" and info["max_grad_norm"] == 1.0
        assert 0 < info["delta"] < 1 / 60 and 0 < info["sample_rate"] < 1 and info["noise_multiplier"] > 0
        ledger = json.loads((run_dir / f"privacy/{bank}.json").read_text())
        assert sum(h[2] for h in ledger["ledger"]["history"]) == 4
        assert ledger["charged_rounds"] == [1, 2]
    # The local report has the simulation's pooled view of the final adapter (ROC, calibration, scores by class).
    page = (run_dir / "report/index.html").read_text()
    for figure in ("quality_by_round", "epsilon", "roc", "calibration", "scores"):
        assert f'src="{figure}.png"' in page and (run_dir / f"report/{figure}.png").stat().st_size > 1000
    assert "pooled view: this process holds every bank" in page
    assert "ε bank-a" in output and "final pooled test AUC" in output
    # The final adapter is the last round's global adapter.
    last = load_file(run_dir / "rounds/0002/global/adapter.safetensors")
    final_tensors = load_file(final["adapter"])
    assert all(torch.equal(last[k], final_tensors[k]) for k in last)


def test_epsilon_grows_each_round_and_ends_below_target(tiny_config) -> None:  # type: ignore[no-untyped-def]
    config = tiny_config.model_copy(update={"privacy": tiny_config.privacy.model_copy(update={"target_epsilon": 2.0})})
    summary = simulate(config).to_json()
    first, second = summary["rounds"]
    for bank, eps in second["epsilon"].items():
        assert first["epsilon"][bank] < eps <= 2.0
        assert eps > 1.9  # calibration is tight: the whole budget is used by the last round


@pytest.mark.parametrize(
    "extra",
    [
        ["model.name=tiny-llama"],
        # seed 2: at seed 0 this skew leaves bank-a so few rows that its hash-placed validation split is empty
        ["lora.ffa=true", "data.partition=dirichlet", "data.dirichlet_alpha=0.5", "seed=2"],
        ["privacy.enabled=false"],
        ["privacy.enabled=false", "privacy.clip_when_disabled=true"],
        ["privacy.accountant=rdp", "privacy.release_metrics=true", "data.partition=quantity"],
        ["federation.fraction_fit=0.5", "federation.min_banks=2"],
    ],
)
def test_simulate_variants(tiny_overrides: list[str], extra: list[str]) -> None:
    summary = simulate(load_config(None, [*tiny_overrides, *extra])).to_json()
    assert len(summary["rounds"]) == 2
    assert all(math.isfinite(r["auc"]) for r in summary["rounds"])
    if "privacy.enabled=false" in extra:
        assert summary["privacy"] == {} and all(e is None for e in summary["final"]["epsilon"].values())
        assert summary["privacy_mode"] == "none"
    if "lora.ffa=true" in extra:
        assert "exact" in summary["aggregation"]
    if "federation.fraction_fit=0.5" in extra:
        assert all(len(r["banks"]) == 2 for r in summary["rounds"])


def test_seeded_runs_are_reproducible(tiny_overrides: list[str], tmp_path: Path) -> None:
    seeded = [*tiny_overrides, "privacy.insecure_seeded_noise=true"]  # research setting: replayable noise
    a = simulate(load_config(None, seeded)).to_json()
    b = simulate(load_config(None, [*seeded, "output.run_name=again"])).to_json()
    assert [r["auc"] for r in a["rounds"]] == [r["auc"] for r in b["rounds"]]
    assert a["final"]["sha256"] == b["final"]["sha256"]


def test_a_failing_bank_does_not_end_the_round(tiny_overrides: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import fedlora.simulate as sim

    real = sim.run_bank_round

    def flaky(config, *, bank, **kwargs):  # type: ignore[no-untyped-def]
        if bank == "bank-b":
            raise RuntimeError("GPU fell off the bus")
        return real(config, bank=bank, **kwargs)

    monkeypatch.setattr(sim, "run_bank_round", flaky)
    summary = simulate(load_config(None, tiny_overrides)).to_json()
    for record in summary["rounds"]:
        assert "bank-b" in record["failed"] and "GPU fell off the bus" in record["failed"]["bank-b"]
        assert record["banks"] == ["bank-a", "bank-c"]


def test_too_few_banks_fails_clearly(tiny_overrides: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("out of memory")

    monkeypatch.setattr(local_round_module, "train_local", broken)
    with pytest.raises(SimulationError, match="min_banks=2"):
        simulate(load_config(None, tiny_overrides))


def test_bad_config_exits_2_and_names_the_key(tmp_path: Path) -> None:
    code, output = _run_cli(["simulate", "--set", "privacy.target_epsilon=-3", "--set", f"output.dir={tmp_path}"])
    assert code == 2
    assert "privacy.target_epsilon" in output
    assert not any(tmp_path.iterdir())


def test_impossible_delta_exits_1_and_writes_nothing(tiny_overrides: list[str], tmp_path: Path) -> None:
    code, output = _run_cli(["simulate", *_sets(tiny_overrides), "--set", "privacy.delta=0.5"])
    assert code == 1
    assert "1/n" in output
    assert not (tmp_path / "runs").exists()


def test_bad_bank_file_exits_1_and_writes_nothing(tiny_overrides: list[str], tmp_path: Path) -> None:
    from importlib import resources

    with resources.files("fedlora.data").joinpath("german_credit.csv").open("r", encoding="utf-8") as f:
        raw = pd.read_csv(f, dtype=object).head(80)
    raw.loc[7, "age_in_years"] = "-4"
    path = tmp_path / "bank-b.csv"
    raw.to_csv(path, index=False)
    banks = f"federation.banks=[{{name: bank-a}}, {{name: bank-b, data: '{path}'}}]"
    code, output = _run_cli(["simulate", *_sets(tiny_overrides), "--set", banks])
    assert code == 1
    assert str(path) in output and "age_in_years" in output and "row 8" in output and "-4" in output
    assert not (tmp_path / "runs").exists()


def test_unknown_model_is_a_clear_error(tiny_overrides: list[str], tmp_path: Path) -> None:
    code, output = _run_cli(["simulate", *_sets(tiny_overrides), "--set", "model.name=/no/such/model"])
    assert code == 1
    assert "unknown model '/no/such/model'" in output
    assert not (tmp_path / "runs").exists()


def test_help_explains_every_field() -> None:
    code, output = _run_cli(["simulate", "--help"])
    assert code == 0
    for field in ("privacy.target_epsilon", "federation.rounds", "lora.ffa", "--set", "--json"):
        assert field in output


_SMALL_REAL_RUN = ("data.max_rows=150", "training.local_steps=1", "training.batch_size=8")


def _one_round_config(tmp_path: Path, run_name: str, *overrides: str) -> Config:
    """One round of a real (pretrained) model, no tracking, written under ``tmp_path``."""
    base = ["federation.rounds=1", "tracking.enabled=false", f"output.dir={tmp_path}", f"output.run_name={run_name}"]
    return load_config(None, [*base, *overrides])


@pytest.mark.slow
def test_real_minilm_federation(tmp_path: Path) -> None:
    """The embedded default's model on a small sample of its data (Taiwan, the columns beside the text)."""
    sample = ("data.max_rows=300", "training.batch_size=16", "training.local_steps=2")
    summary = simulate(_one_round_config(tmp_path, "minilm", *sample)).to_json()
    assert (summary["model"], summary["dataset"]) == ("minilm", "taiwan_credit")
    assert 0 < summary["final"]["auc"] < 1
    # the recipe: FFA-LoRA (B only), rank 4, q and v of the top layer only, plus the 2-class head, which reads
    # the pooled text (384) and the row's 108 column features (fedlora.data.features.head_feature_width)
    assert summary["trainable_parameters"] == 1 * 2 * 384 * 4 + (384 + 108) * 2 + 2


def test_mlflow_local_tracking(tiny_overrides: list[str], tmp_path: Path) -> None:
    import mlflow

    overrides = [o for o in tiny_overrides if not o.startswith("tracking.")] + ["tracking.experiment=t"]
    summary = simulate(load_config(None, overrides)).to_json()
    uri = f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').resolve()}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["privacy.target_epsilon"] == "8.0"
    history = client.get_metric_history(run.info.run_id, "epsilon_bank-a")
    assert [m.step for m in history] == [1, 2]
    assert history[-1].value == pytest.approx(summary["final"]["epsilon"]["bank-a"])
    assert run.data.tags["epsilon.bank-a"] == str(summary["final"]["epsilon"]["bank-a"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "final_adapter")}
    assert "final_adapter/adapter.safetensors" in artifacts
    # The simulation's pooled view of every bank's test rows stays in the local report, out of MLflow.
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert "report/index.html" in logged and "report/roc.png" not in logged, logged
    assert (Path(summary["report"]).parent / "roc.png").exists()


@pytest.mark.slow
def test_real_smollm2_causal_lm_path(tmp_path: Path) -> None:
    """The SmolLM2 preset: GGUF converted once to a cached checkpoint, then a Llama classifier."""
    from fedlora.model.loading import smollm2_checkpoint

    summary = simulate(_one_round_config(tmp_path, "smol", *_SMALL_REAL_RUN, "model.name=smollm2")).to_json()
    assert (smollm2_checkpoint() / "config.json").exists()
    assert summary["model"] == "smollm2"
    assert math.isfinite(summary["final"]["auc"])
    # The recipe: FFA-LoRA (B only), r=4 on q_proj and v_proj (576 -> 576 and 576 -> 192) of the top
    # layer only, plus the 2x576 score head.
    assert summary["trainable_parameters"] == 1 * 4 * (576 + 192) + 2 * 576


@pytest.mark.slow
@pytest.mark.parametrize("bits", ["4", "8"])
def test_quantized_minilm_trains_with_dp(bits: str, tmp_path: Path) -> None:
    """bitsandbytes NF4 / int8 base weights, LoRA and head in full precision, DP-SGD on CPU."""
    summary = simulate(
        _one_round_config(tmp_path, f"q{bits}", *_SMALL_REAL_RUN, f"model.quantization={bits}")
    ).to_json()
    assert math.isfinite(summary["final"]["auc"])
    assert all(0 < e <= 8 for e in summary["final"]["epsilon"].values())
