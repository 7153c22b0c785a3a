"""Petastorm reader, training end to end on the tiny profile, artifacts and resume."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from pyspark.sql import functions as F
from torch.optim.swa_utils import AveragedModel

from cdtm.config import Config, TrainConf
from cdtm.data.batch import Batch
from cdtm.data.reader import FeatureReader, ReaderConf
from cdtm.lake import Lake
from cdtm.model import build_model
from cdtm.train.artifacts import ArtifactError, load_artifact
from cdtm.train.job import LakeData, reader_conf, resolve_inputs, train_model
from cdtm.train.loop import click_loss, domain_weights, fit, predict, weight_average
from tests.conftest import tiny_config as tiny


def test_reader_shards_are_disjoint_and_cover_the_split(spark, ml100k) -> None:
    cfg, _ = ml100k
    inputs = resolve_inputs(cfg)
    conf = ReaderConf(batch_size=1000)
    shards = [
        np.concatenate(
            [
                b.row_id.numpy()
                for b in FeatureReader(inputs.files, inputs.spec, "train", conf, r, 2).batches(
                    seed=r
                )
            ]
        )
        for r in range(2)
    ]
    assert len(np.intersect1d(shards[0], shards[1])) == 0
    expected = (
        Lake(cfg.lake.root)
        .read(spark, "features")
        .where(F.col("split") == "train")
        .select("row_id")
    )
    assert sorted(np.concatenate(shards).tolist()) == sorted(r[0] for r in expected.collect())


def test_reader_batches_match_the_table(spark, ml100k) -> None:
    cfg, _ = ml100k
    inputs = resolve_inputs(cfg)
    batches = list(
        FeatureReader(inputs.files, inputs.spec, "test", ReaderConf(batch_size=4096)).batches(None)
    )
    assert all(len(b) == 4096 for b in batches[:-1])
    b = batches[0]
    assert (
        b.fields.shape == (4096, 6) and b.fields.dtype == torch.int64 and b.dense.shape == (4096, 1)
    )
    row = (
        Lake(cfg.lake.root)
        .read(spark, "features")
        .where(F.col("row_id") == int(b.row_id[0]))
        .first()
    )
    assert [row[f.column] for f in inputs.spec.fields] == b.fields[0].tolist()
    assert (row["domain"], row["label"], row["split"]) == (
        int(b.domain[0]),
        int(b.label[0]),
        "test",
    )


def test_reader_domain_filter_and_down_sampling(ml100k) -> None:
    cfg, _ = ml100k
    inputs = resolve_inputs(cfg)

    def domain_counts(conf: ReaderConf, filtered: bool) -> np.ndarray:
        reader = FeatureReader(inputs.files, inputs.spec, "train", conf, filtered=filtered)
        return sum(np.bincount(b.domain.numpy(), minlength=3) for b in reader.batches(None))

    counts = domain_counts(
        ReaderConf(batch_size=50_000, domains=(0, 2), fractions=((2, 0.25),)), True
    )
    full = domain_counts(ReaderConf(batch_size=50_000), False)
    assert counts[1] == 0 and counts[0] == full[0]
    assert 0.2 < counts[2] / full[2] < 0.3


def test_reader_shuffles_or_flips_one_domains_labels(ml100k) -> None:
    cfg, _ = ml100k
    inputs = resolve_inputs(cfg)

    def rows(conf: ReaderConf) -> Counter[tuple[int, int, float]]:
        """(row id, domain, label) of every training row read; a multiset, since the lake may
        hold the same events under several days."""
        reader = FeatureReader(inputs.files, inputs.spec, "train", conf, filtered=True)
        return Counter(
            (int(r), int(d), float(y))
            for b in reader.batches(seed=3)
            for r, d, y in zip(b.row_id, b.domain, b.label)
        )

    def of(rows: Counter, domain: int) -> Counter:
        return Counter({k: n for k, n in rows.items() if k[1] == domain})

    plain = rows(ReaderConf(batch_size=4096))
    shuffled = rows(ReaderConf(batch_size=4096, shuffled_labels=(1,)))
    for d in range(3):
        before, after = of(plain, d), of(shuffled, d)
        assert before.total() == after.total()
        # A permutation: the domain's click count (so its click rate) is unchanged.
        assert sum(y * n for (_, _, y), n in before.items()) == sum(
            y * n for (_, _, y), n in after.items()
        )
        if d == 1:
            assert (after - before).total() > 0.3 * after.total()  # labels moved to other rows
        else:
            assert before == after  # other domains untouched
    flipped = rows(ReaderConf(batch_size=4096, flipped_labels=(2,)))
    assert flipped == Counter({(r, d, 1 - y if d == 2 else y): n for (r, d, y), n in plain.items()})


def test_tiny_train_on_movielens_100k_writes_a_verified_artifact(ml100k) -> None:
    cfg = tiny(ml100k[0], "model.name=cdtm", "train.model_version=ml100k-cdtm", "run.ds=2024-03-01")
    result = train_model(cfg)
    m = result.metrics
    assert m["test.auc.pooled"] > 0.70  # MovieLens-100K: clearly above chance after 3 small epochs
    assert {
        "test.auc.0",
        "test.auc.1",
        "test.auc.2",
        "valid.auc.pooled",
        "test.logloss.pooled",
    } <= set(m)
    out = result.artifact
    for f in [
        "weights.pt",
        "model.json",
        "feature_spec.json",
        "data.json",
        "metrics.json",
        "manifest.json",
        "training_curves.png",
        "domain_auc.png",
    ]:
        assert (out / f).is_file(), f
    data = json.loads((out / "data.json").read_text())
    assert data["versions"]["features"] == Lake(cfg.lake.root).version("features")

    model, spec, _ = load_artifact(out)
    inputs = resolve_inputs(cfg)
    source = LakeData(inputs, reader_conf(cfg, inputs.spec))
    y, p, d = predict(model, source.eval_batches("test"), torch.device("cpu"))
    from sklearn.metrics import roc_auc_score

    assert abs(roc_auc_score(y, p) - m["test.auc.pooled"]) < 1e-9

    weights = out / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:-10])  # truncated
    with pytest.raises(ArtifactError, match="weights.pt does not match its SHA-256"):
        load_artifact(out)


def test_tiny_train_on_synthetic_data(synthetic_lake) -> None:
    cfg, _ = synthetic_lake
    torch.set_flush_denormal(False)
    assert torch.tensor([1e-41]).item() != 0.0  # subnormals kept: the CPU's default
    for name in ("cdtm", "star"):
        result = train_model(
            tiny(cfg, f"model.name={name}", f"train.model_version=syn-{name}", "train.plots=false")
        )
        assert result.metrics["test.auc.pooled"] > 0.6, name
        assert result.metrics["test.auc.d3"] is not None  # the sparse target is evaluated
    # Training turned subnormal floats to zero (they slowed CPU matmuls 170-fold).
    assert torch.tensor([1e-41]).item() == 0.0


def bce_of(x: float, y: float) -> float:
    """One row's binary cross-entropy from its logit, written out."""
    p = 1 / (1 + math.exp(-x))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_click_loss_weighs_rows_or_domains() -> None:
    logits = torch.tensor([0.3, -1.2, 2.0, 0.1, -0.4], requires_grad=True)
    label = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])
    domain = torch.tensor([0, 2, 2, 2, 2])  # domain 1 is absent from this batch
    row = [float(bce_of(x, y)) for x, y in zip(logits.tolist(), label.tolist(), strict=True)]
    d2 = sum(row[1:]) / 4

    def loss(weighting: str, weights: list[float] | None) -> float:
        w = torch.tensor(weights) if weights is not None else None
        return float(click_loss(logits, label, domain, weighting, w).detach())

    assert loss("rows", None) == pytest.approx(sum(row) / 5)
    assert loss("rows", [3.0, 1.0, 1.0]) == pytest.approx((3 * row[0] + sum(row[1:])) / 7)
    # every domain present counts alike: domain 0's one row weighs as much as domain 2's four
    assert loss("domains", [1.0, 1.0, 1.0]) == pytest.approx((row[0] + d2) / 2)
    assert loss("domains", [1.0, 5.0, 3.0]) == pytest.approx((row[0] + 3 * d2) / 4)

    # a domain weighted 0 sends no gradient; the others do
    click_loss(logits, label, domain, "domains", torch.tensor([0.0, 1.0, 1.0])).backward()
    assert logits.grad is not None
    assert logits.grad[0] == 0 and bool((logits.grad[1:] != 0).all())


def test_domain_loss_weights_name_known_domains() -> None:
    conf = TrainConf(domain_loss_weights={"0": 2.0})
    assert domain_weights(conf, ["0", "1"]).tolist() == [2.0, 1.0]
    assert domain_weights(TrainConf(), ["0", "1"]) is None  # the plain mean over rows
    assert domain_weights(TrainConf(loss_weighting="domains"), ["0", "1"]).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match=r"train.domain_loss_weights: unknown domains \['7'\]"):
        domain_weights(TrainConf(domain_loss_weights={"7": 2.0}), ["0", "1"])


def test_weight_average_is_the_mean_of_the_steps_then_exponential() -> None:
    averaged_of = AveragedModel(torch.nn.Linear(1, 1, bias=False), multi_avg_fn=weight_average(0.9))
    model = torch.nn.Linear(1, 1, bias=False)
    xs = [3.0, -1.0, 2.0, 5.0, 0.5, 4.0, -2.0, 1.0, 7.0, 0.0]  # 10 = 1 / (1 - 0.9) steps
    for t, x in enumerate(xs, start=1):
        with torch.no_grad():
            model.weight.fill_(x)
        averaged_of.update_parameters(model)
        assert abs(averaged_of.module.weight.item() - sum(xs[:t]) / t) < 1e-6, t

    for x in (10.0, -4.0, 6.0):  # from here on each new weight enters with 1 - 0.9, not 1 / t
        with torch.no_grad():
            model.weight.fill_(x)
        before = averaged_of.module.weight.item()
        averaged_of.update_parameters(model)
        assert abs(averaged_of.module.weight.item() - (0.9 * before + 0.1 * x)) < 1e-6, x


def test_weight_averaging_keeps_the_average_not_the_last_weights(synthetic_lake) -> None:
    cfg = tiny(synthetic_lake[0], "train.max_epochs=1")
    inputs = resolve_inputs(cfg)
    data = LakeData(inputs, reader_conf(cfg, inputs.spec))

    def trained(ema: float) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = build_model(inputs.spec, cfg.model)
        conf = dataclasses.replace(cfg.train, ema=ema)
        fit(model, conf, data, inputs.spec.domains, device=torch.device("cpu"))
        return model.state_dict()

    last, instant, averaged = trained(0.0), trained(1e-12), trained(0.9)
    # The same steps: an average that forgets at once is the last weights; a slow one is not.
    for name, w in last.items():
        assert torch.allclose(instant[name], w), name
    assert any(not torch.allclose(averaged[n], w, atol=1e-4) for n, w in last.items())


class Crash(RuntimeError):
    pass


class CrashingData:
    """The same data, but the process 'dies' after ``after`` training batches."""

    def __init__(self, inner: LakeData, after: int) -> None:
        self.inner, self.after = inner, after

    def train_batches(self, seed: int) -> Iterator[Batch]:
        for i, b in enumerate(self.inner.train_batches(seed)):
            if i == self.after:
                raise Crash("killed mid-epoch")
            yield b

    def train_steps(self) -> int:
        return self.inner.train_steps()

    def eval_batches(self, split: str) -> Iterator[Batch]:
        return self.inner.eval_batches(split)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(
    synthetic_lake, tmp_path: Path
) -> None:
    # One thread: multi-threaded float reductions differ in the last bits even between two straight runs.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _resume_matches(synthetic_lake[0], tmp_path)
    finally:
        torch.set_num_threads(threads)


def _resume_matches(base: Config, tmp_path: Path) -> None:
    cfg = tiny(
        base,
        "train.max_epochs=2",
        "train.checkpoint_every=5",
        "train.patience=5",
        "train.ema=0.9",  # the weight average is resumed too: the test compares it
        "model.dropout=0.1",
    )
    inputs = resolve_inputs(cfg)
    data = LakeData(inputs, reader_conf(cfg, inputs.spec))
    cpu = torch.device("cpu")

    torch.manual_seed(0)
    straight = build_model(inputs.spec, cfg.model)
    fit(straight, cfg.train, data, inputs.spec.domains, device=cpu, checkpoint_dir=tmp_path / "a")

    torch.manual_seed(0)
    first = build_model(inputs.spec, cfg.model)
    with pytest.raises(
        Crash
    ):  # dies at step 12 of epoch 0, 2 steps after the checkpoint of step 10
        fit(
            first,
            cfg.train,
            CrashingData(data, after=12),
            inputs.spec.domains,
            device=cpu,
            checkpoint_dir=tmp_path / "b",
        )
    crashed = CrashingData(data, after=10**9)
    # A fresh process: a new model object, state only from the checkpoint.
    torch.manual_seed(123)
    resumed = build_model(inputs.spec, cfg.model)
    result = fit(
        resumed,
        cfg.train,
        crashed,
        inputs.spec.domains,
        device=cpu,
        checkpoint_dir=tmp_path / "b",
        resume=True,
    )
    assert result.epochs_run == 2
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_mlflow_tracks_params_metrics_artifact_and_registers(
    synthetic_lake, tmp_path: Path
) -> None:
    """From the driver: params, metrics, a pyfunc model with a signature that any MLflow
    client scores like the artifact does, and a registered version tagged with it."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from cdtm.scoring.executor import batch_from_pandas
    from cdtm.train.launch import launch
    from cdtm.train.pyfunc import input_example

    store = tmp_path / "mlruns"
    cfg = tiny(
        synthetic_lake[0],
        "tracking.enabled=true",
        f"tracking.uri={store}",
        "tracking.experiment=t",
        "tracking.registered_model=cdtm-test",
        "train.backend=single",
        "train.max_epochs=2",
        "train.model_version=tracked",
    )
    result = launch(None, cfg)
    mlflow.set_tracking_uri(f"file://{store}")
    client = MlflowClient()
    run = client.search_runs([client.get_experiment_by_name("t").experiment_id])[0]
    assert run.data.params["model.name"] == "cdtm" and run.data.tags["model_version"] == "tracked"
    assert abs(run.data.metrics["test.auc.pooled"] - result.metrics["test.auc.pooled"]) < 1e-12
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted({m.step for m in losses}) == [0, 1]  # one per epoch
    versions = client.search_model_versions("name = 'cdtm-test'")
    assert [v.run_id for v in versions] == [run.info.run_id]
    assert versions[0].tags["model_version"] == "tracked"

    pyfunc = mlflow.pyfunc.load_model("models:/cdtm-test/1")
    inputs = pyfunc.metadata.get_input_schema().input_names()
    model, spec, _ = load_artifact(result.artifact)
    assert inputs == ["domain", *spec.columns]
    example = input_example(spec, rows=6)
    example[spec.fields[0].column] = [2, 3, 4, 5, 6, 7]
    got = pyfunc.predict(example)
    with torch.no_grad():
        want = torch.sigmoid(model(batch_from_pandas(example, spec))).numpy()
    assert np.allclose(np.asarray(got), want, atol=1e-6)

    # Promoting the model points the registered model's champion alias at its version.
    from cdtm.champion import promote
    from cdtm.scoring import resolve_artifact

    promote(cfg, "tracked", "test")
    assert str(client.get_model_version_by_alias("cdtm-test", "champion").version) == "1"
    alias = dataclasses.replace(
        cfg, scoring=dataclasses.replace(cfg.scoring, model="alias:champion")
    )
    assert resolve_artifact(alias).resolve() == result.artifact.resolve()


def test_a_tracking_failure_keeps_the_model_and_says_so(synthetic_lake, tmp_path: Path) -> None:
    from cdtm.train.launch import launch
    from cdtm.train.tracking import TrackingError

    not_a_folder = tmp_path / "mlruns"
    not_a_folder.write_text("a file where the store should be")
    cfg = tiny(
        synthetic_lake[0],
        "tracking.enabled=true",
        f"tracking.uri={not_a_folder}",
        "train.backend=single",
        "train.max_epochs=1",
        f"artifacts.root={tmp_path / 'art'}",
        "train.model_version=kept",
    )
    with pytest.raises(TrackingError, match="artifact is complete at .*kept.*MLflow tracking"):
        launch(None, cfg)
    load_artifact(tmp_path / "art" / "kept")  # complete and verified


def test_threads_auto_shares_this_process_cores_among_the_local_processes() -> None:
    import os

    from cdtm.train.job import intra_op_threads

    cores = len(os.sched_getaffinity(0))
    assert intra_op_threads("auto", 1) == cores
    assert intra_op_threads("auto", 2) == max(1, cores // 2)
    assert intra_op_threads("auto", 4 * cores) == 1  # never 0 (torch's default)
    assert intra_op_threads(3, 2) == 3 and intra_op_threads(0, 2) == 0


def test_petastorm_warnings_are_dropped_at_their_source_and_others_kept() -> None:
    import warnings

    from cdtm.data.reader import quiet_petastorm

    with warnings.catch_warnings(record=True) as got:
        warnings.resetwarnings()  # not pytest's own filters: only what the reader installs
        warnings.simplefilter("always")
        quiet_petastorm()
        for module in ("petastorm.reader", "petastorm", "petastorm_fork", "mylib"):
            warnings.warn_explicit("old API", FutureWarning, "f.py", 1, module=module)
        warnings.warn_explicit("real", UserWarning, "f.py", 2, module="petastorm.reader")
    assert sorted(str(w.message) + "@" + w.filename for w in got) == [
        "old API@f.py",
        "old API@f.py",
        "real@f.py",
    ]
    import logging

    chatty = logging.getLogger("petastorm.etl.dataset_metadata")
    assert not chatty.isEnabledFor(logging.INFO) and chatty.isEnabledFor(logging.WARNING)


def test_available_cores_follow_a_containers_cpu_quota(tmp_path) -> None:  # noqa: ANN001
    import os

    from cdtm.train.job import available_cores

    affinity = len(os.sched_getaffinity(0))
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs: 2 threads at most
    assert available_cores(str(v2)) == min(affinity, 2)
    (v2 / "cpu.max").write_text("max 100000\n")
    assert available_cores(str(v2)) == affinity
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cores(str(v1.parent)) == 1
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert available_cores(str(v1.parent)) == affinity
    assert available_cores(str(tmp_path / "none")) == affinity
