"""The DP recipe: mean-pooled zero head, late adapters, cached frozen layers, refused settings, Taiwan data."""

from __future__ import annotations

import gzip
import logging
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from fedlora.config import ConfigError, load_config
from fedlora.data.datasets import TAIWAN_CREDIT, load_dataset
from fedlora.data.files import read_bank_file
from fedlora.data.schema import DataValidationError
from fedlora.data.serialize import serialize_row
from fedlora.model.cache import CachedSet, cache_frozen_layers, splittable_core
from fedlora.model.heads import masked_mean
from fedlora.model.loading import load_base_model
from fedlora.model.lora import attach_lora
from fedlora.privacy.per_sample import PerExampleGradients
from fedlora.privacy.randomness import SeededRandomness
from fedlora.runtime import CacheProgress
from fedlora.training import DPSettings, dp_gradient, make_optimizer
from helpers import randomize_trainable, tiny_runtime

CPU = torch.device("cpu")


def test_plain_adam_with_dp_is_refused_before_training() -> None:
    with pytest.raises(ConfigError, match=r"training\.optimizer=adam cannot work with DP"):
        load_config(None, ["training.optimizer=adam"])
    assert load_config(None, ["training.optimizer=adam", "privacy.enabled=false"]).training.optimizer == "adam"


def test_clipping_without_noise_is_refused_on_a_dp_run() -> None:
    with pytest.raises(ConfigError, match=r"clip_when_disabled=true applies only to a non-private run"):
        load_config(None, ["privacy.clip_when_disabled=true"])
    assert load_config(None, ["privacy.enabled=false", "privacy.clip_when_disabled=true"]).privacy.clip_when_disabled


def test_unknown_dataset_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown dataset 'nope'.*taiwan_credit"):
        load_config(None, ["data.dataset=nope"])


def test_more_top_layers_than_the_model_has_is_an_error() -> None:
    loaded = load_base_model("tiny-bert", device=CPU)
    with pytest.raises(ValueError, match=r"lora\.top_layers=3 exceeds the model's 2 layers"):
        attach_lora(loaded, load_config(None, ["lora.top_layers=3"]).lora, seed=0)


def test_encoder_head_is_zero_and_reads_the_masked_mean(tmp_path: Path) -> None:
    runtime = tiny_runtime(tmp_path, "model.cache_frozen_layers=false")
    model, data = runtime.model, runtime.bank("bank-a").train
    core = splittable_core(model)
    assert core is not None
    head = core.classifier
    assert all(float(p.detach().abs().max()) == 0.0 for p in head.parameters())
    index = torch.arange(8)
    logits, _ = data.logits(model, index, CPU)
    assert torch.equal(logits, torch.zeros_like(logits))  # p = 1/2 for every row at the start
    with torch.no_grad():
        for p in head.parameters():
            p.normal_()
        input_ids, mask, _ = data.batch(index, CPU)
        hidden = core.bert(input_ids=input_ids, attention_mask=mask).last_hidden_state
        expected = head(masked_mean(hidden, mask))
        assert torch.allclose(data.logits(model, index, CPU)[0], expected, atol=1e-5)
    # padding does not change a row's mean: the same row alone and in a padded batch agree
    alone, _ = data.logits(model, index[:1], CPU)
    assert torch.allclose(alone, data.logits(model, index, CPU)[0][:1], atol=1e-5)


def test_a_long_frozen_layer_pass_logs_its_progress_without_row_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = tiny_runtime(tmp_path, "lora.top_layers=1", "model.cache_frozen_layers=false")
    tokens = runtime.bank("bank-a").train
    calls: list[tuple[int, int]] = []
    cached = cache_frozen_layers(
        runtime.model, tokens, batch_size=7, device=CPU, progress=lambda d, t: calls.append((d, t))
    )
    assert isinstance(cached, CachedSet)
    assert calls[-1] == (len(tokens), len(tokens)) and [d for d, _ in calls] == sorted({d for d, _ in calls})
    # a pass longer than quiet_seconds is reported; percentages only, never the bank's row count
    progress = CacheProgress("bank-a", total=3 * len(tokens), quiet_seconds=0.0, every_seconds=0.0)
    with caplog.at_level(logging.INFO, logger="fedlora.runtime"):
        for offset in progress.offsets([tokens, tokens, tokens]):
            cache_frozen_layers(runtime.model, tokens, batch_size=len(tokens), device=CPU, progress=progress.at(offset))
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" for ")[1].split("%")[0] for line in lines] == ["33", "66", "100"]
    assert all(line.startswith("bank-a: frozen layers computed once") for line in lines)
    assert not any(str(len(tokens)) in line.split("(")[0] for line in lines)
    # a short pass stays silent
    caplog.clear()
    quiet = CacheProgress("bank-a", total=len(tokens))
    with caplog.at_level(logging.INFO, logger="fedlora.runtime"):
        cache_frozen_layers(runtime.model, tokens, batch_size=7, device=CPU, progress=quiet.at(0))
    assert caplog.records == []


def test_only_the_top_layers_are_adapted_and_the_rest_is_cached(tmp_path: Path) -> None:
    runtime = tiny_runtime(tmp_path, "lora.top_layers=1")
    trainable = [n for n, p in runtime.model.named_parameters() if p.requires_grad]
    assert trainable and all(".layer.1." in n or "classifier" in n for n in trainable)
    cached = runtime.bank("bank-a").train
    assert isinstance(cached, CachedSet) and cached.start_layer == 1


@pytest.mark.parametrize(
    "extra",
    [(), ("data.dataset=taiwan_credit", "model.max_length=96", "model.schema_features=true")],
    ids=["text", "text+columns"],
)
def test_cached_activations_give_the_same_loss_and_per_example_gradients(
    tmp_path: Path, extra: tuple[str, ...]
) -> None:
    runtime = tiny_runtime(tmp_path, "lora.top_layers=1", "model.cache_frozen_layers=false", *extra)
    model = runtime.model
    randomize_trainable(model)
    tokens = runtime.bank("bank-a").train
    cached = cache_frozen_layers(model, tokens, batch_size=7, device=CPU)
    assert isinstance(cached, CachedSet) and cached.features is tokens.features
    collector = PerExampleGradients(model)
    index = torch.arange(0, len(tokens), 3)
    results = []
    for data in (tokens, cached):
        with collector:
            logits, labels = data.logits(model, index, CPU)
            losses = F.cross_entropy(logits, labels, reduction="none")
        results.append((losses.detach(), collector.compute(losses.sum())))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.allclose(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) == len(collector.parameters())
    for p in grads_a:
        assert float(grads_a[p].abs().max()) > 0
        assert torch.allclose(grads_a[p], grads_b[p], rtol=1e-4, atol=1e-6)
    # and a whole DP-SGD gradient (clip, noise from the same seed) agrees
    dp = DPSettings(noise_multiplier=1.0, max_grad_norm=0.5, sample_rate=0.5)
    noised = [
        dp_gradient(
            model, collector, d, index, dp=dp, physical_batch_size=16, randomness=SeededRandomness(3), device=CPU
        )
        for d in (tokens, cached)
    ]
    for p in noised[0][0]:
        assert torch.allclose(noised[0][0][p], noised[1][0][p], rtol=1e-4, atol=1e-6)
    assert noised[0][1] == pytest.approx(noised[1][1], rel=1e-5)


def test_batch_larger_than_a_bank_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    from fedlora.privacy.accounting import PrivacyConfigError
    from fedlora.runtime import Runtime
    from fedlora.simulate import SimulationError, simulate

    config = load_config(
        None,
        [
            "model.name=tiny-bert",
            "data.max_rows=200",
            "federation.banks=[{name: bank-a, batch_size: 500}, {name: bank-b}, {name: bank-c}]",
            "tracking.enabled=false",
            f"output.dir={tmp_path}",
            "output.run_name=big",
        ],
    )
    runtime = Runtime(config)
    with pytest.raises((PrivacyConfigError, SimulationError), match="batch_size=500 exceeds"):
        simulate(config, runtime=runtime)
    assert not (tmp_path / "big" / "config.yaml").exists()
    # refused from the validated rows alone: no bank's rows went through the frozen layers first
    assert "cache" not in runtime.timer.seconds


# --- Taiwan ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def taiwan() -> pd.DataFrame:
    frame, _ = load_dataset("taiwan_credit")
    return frame


def test_bundled_taiwan_matches_the_uci_description(taiwan: pd.DataFrame) -> None:
    assert taiwan.shape == (30_000, 23 + 1)
    assert int(taiwan["label"].sum()) == 6636  # 22.12% default
    assert len(TAIWAN_CREDIT.columns) == 23
    text = serialize_row(taiwan.iloc[0], TAIWAN_CREDIT)
    assert text.startswith("limit 20000, sex female, education university, marital married, age 24, ")
    assert "status sep 2 months late" in text and "bill sep 3913" in text and "paid aug 689" in text


@pytest.fixture
def taiwan_csv(tmp_path: Path) -> Path:
    """40 rows in the file format a bank would hand over (UCI column names, label yes/no)."""
    with resources.files("fedlora.data").joinpath("taiwan_credit.csv.gz").open("rb") as raw, gzip.open(raw) as f:
        frame = pd.read_csv(f).head(40).drop(columns=["ID"])
    frame["default_payment_next_month"] = frame.pop("target").map({1: "yes", 0: "no"})
    path = tmp_path / "taiwan.csv"
    frame.to_csv(path, index=False)
    return path


def test_a_taiwan_bank_file_is_read(taiwan_csv: Path, taiwan: pd.DataFrame) -> None:
    frame = read_bank_file(taiwan_csv, TAIWAN_CREDIT)
    assert len(frame) == 40
    assert frame["label"].tolist() == taiwan["label"].head(40).tolist()
    assert serialize_row(frame.iloc[3], TAIWAN_CREDIT) == serialize_row(taiwan.iloc[3], TAIWAN_CREDIT)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda f: f.drop(columns=["PAY_AMT3"]), "missing column(s) ['PAY_AMT3']"),
        (lambda f: f.assign(AGE=f["AGE"].mask(f.index == 2, "7")), "column 'AGE', row 3: '7' is below the plausible"),
        (lambda f: f.assign(PAY_0=f["PAY_0"].mask(f.index == 0, "12")), "column 'PAY_0', row 1: '12' is not one of"),
        (lambda f: f.assign(SEX=f["SEX"].mask(f.index == 1, "3")), "column 'SEX', row 2"),
        (lambda f: f.assign(PAY_AMT1=f["PAY_AMT1"].mask(f.index == 4, "-5")), "column 'PAY_AMT1', row 5"),
    ],
)
def test_bad_taiwan_bank_files_are_refused(taiwan_csv: Path, mutate, expected: str) -> None:  # type: ignore[no-untyped-def]
    mutate(pd.read_csv(taiwan_csv, dtype=object)).to_csv(taiwan_csv, index=False)
    with pytest.raises(DataValidationError) as info:
        read_bank_file(taiwan_csv, TAIWAN_CREDIT)
    assert expected in str(info.value)


def test_head_only_ablation_trains_no_adapter(tmp_path: Path) -> None:
    runtime = tiny_runtime(tmp_path, "lora.enabled=false")
    trainable = [n for n, p in runtime.model.named_parameters() if p.requires_grad]
    assert trainable and all("classifier" in n for n in trainable)


def test_dp_logistic_regression_learns_and_is_calibrated_by_the_accountant() -> None:
    import numpy as np

    from fedlora.baselines import DPLogisticSettings, dp_logistic_regression, logistic_scores, mean_interval
    from fedlora.evaluation import compute_metrics

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 5)) / 3
    y = (x[:, 0] - x[:, 1] + rng.normal(scale=0.3, size=2000) > 0).astype(np.int64)
    w = dp_logistic_regression(x, y, settings=DPLogisticSettings(target_epsilon=8), randomness=SeededRandomness(0))
    assert compute_metrics(y, logistic_scores(w, x)).auc > 0.85
    tiny = dp_logistic_regression(
        x, y, settings=DPLogisticSettings(target_epsilon=0.01, steps=5), randomness=SeededRandomness(0)
    )
    assert float(np.abs(tiny).max()) > float(np.abs(w).max())  # ε=0.01 means huge noise
    mean, half = mean_interval([0.7, 0.8, 0.75])
    assert mean == pytest.approx(0.75) and half == pytest.approx(4.303 * 0.05 / 3**0.5, rel=1e-3)


def test_simulate_with_baselines_reports_alone_vs_consortium(tmp_path: Path) -> None:
    from fedlora.simulate import simulate

    config = load_config(
        None,
        [
            "model.name=tiny-bert",
            "data.max_rows=300",
            "federation.rounds=1",
            "training.local_steps=1",
            "training.batch_size=16",
            "tracking.enabled=false",
            f"output.dir={tmp_path}",
            "output.run_name=b",
        ],
    )
    summary = simulate(config, baselines=True).to_json()
    per_bank = summary["baselines"]["per_bank"]
    assert set(per_bank) == {"bank-a", "bank-b", "bank-c"}
    for bank, row in per_bank.items():
        assert 0 <= row["alone_lr_auc"] <= 1 and 0 <= row["alone_dp_lr_auc"] <= 1
        assert row["epsilon"] == 8.0
        assert row["consortium_auc"] == summary["final"]["per_bank_test"][bank]["auc"]
    assert 0.5 < summary["baselines"]["pooled"]["lr_pooled_nonprivate"] <= 1
    page = (tmp_path / "b" / "report" / "index.html").read_text(encoding="utf-8")
    assert (
        "Alone vs consortium" in page and (tmp_path / "b" / "report" / "alone_vs_consortium.png").stat().st_size > 1000
    )


def test_decoder_score_head_starts_from_the_lm_heads_good_and_bad_rows() -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from fedlora.model.heads import init_score_from_lm_head
    from fedlora.model.loading import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=32,
        num_labels=2,
        pad_token_id=0,
        tie_word_embeddings=True,
    )
    model = LlamaForSequenceClassification(config)
    assert init_score_from_lm_head(model, tokenizer)
    ids = [tokenizer.encode(w, add_special_tokens=False)[0] for w in (" good", " bad")]
    assert torch.equal(model.score.weight, model.get_input_embeddings().weight[ids])
    untied = LlamaForSequenceClassification(config.__class__(**{**config.to_dict(), "tie_word_embeddings": False}))
    assert not init_score_from_lm_head(untied, tokenizer)


def test_lora_learning_rate_applies_to_the_adapter_only(tmp_path: Path) -> None:
    runtime = tiny_runtime(tmp_path, "training.lora_learning_rate=0.01")
    model, training = runtime.model, runtime.config.training
    trainable = [p for p in model.parameters() if p.requires_grad]
    lora = frozenset(p for n, p in model.named_parameters() if "lora_" in n and p.requires_grad)
    assert lora and len(lora) < len(trainable)
    rates = {id(p): g["lr"] for g in make_optimizer(trainable, training, lora=lora).param_groups for p in g["params"]}
    assert {rates[id(p)] for p in lora} == {0.01}
    assert {rates[id(p)] for p in trainable if p not in lora} == {training.learning_rate}
    default = tiny_runtime(tmp_path / "default").config.training  # None: one rate for every parameter
    rates = {g["lr"] for g in make_optimizer(trainable, default, lora=lora).param_groups}
    assert rates == {default.learning_rate}


def test_the_clipped_non_private_gradient_is_the_clipped_sum_over_the_expected_batch(tmp_path: Path) -> None:
    """``privacy.clip_when_disabled``: DP-SGD with σ = 0, i.e. ``Σ_i g_i·min(1, C/‖g_i‖) / (q·n)``, nothing drawn."""
    runtime = tiny_runtime(tmp_path, "model.cache_frozen_layers=false")
    model, data = runtime.model, runtime.bank("bank-a").train
    randomize_trainable(model)
    collector = PerExampleGradients(model)
    params = collector.parameters()
    index = torch.arange(0, 12)
    expected = {p: torch.zeros_like(p) for p in params}
    norms = []
    for i in index:  # one backward per row, clipped by hand
        model.zero_grad(set_to_none=True)
        logits, labels = data.logits(model, i.reshape(1), CPU)
        F.cross_entropy(logits, labels).backward()
        norm = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in params))  # type: ignore[union-attr]
        norms.append(float(norm))
        for p in params:
            expected[p] += p.grad * min(1.0, 0.05 / float(norm))  # type: ignore[operator]
    assert min(norms) > 0.05  # every row is clipped
    dp = DPSettings(noise_multiplier=0.0, max_grad_norm=0.05, sample_rate=0.25)

    class NoDraws(SeededRandomness):
        def normal(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            raise AssertionError("the clipped non-private gradient draws no noise")

    grads, _, got_norms = dp_gradient(
        model, collector, data, index, dp=dp, physical_batch_size=5, randomness=NoDraws(0), device=CPU
    )
    assert torch.allclose(got_norms, torch.tensor(norms), rtol=1e-4)
    for p in params:
        assert torch.allclose(grads[p], expected[p] / (0.25 * len(data)), rtol=1e-4, atol=1e-7)
