"""Horovod on Spark executors (local[2], loopback only): shards, equivalence, stopping, resume."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from cdtm.lake import Lake
from cdtm.train.job import LakeData, ReaderConf, TrainInputs, resolve_inputs, train_model
from cdtm.train.launch import _rank_main
from tests.conftest import tiny_config as tiny

hvd_spark = pytest.importorskip("horovod.spark", reason="horovod not built: run `make horovod`")


def run_on_executors(fn, *args):  # noqa: ANN001, ANN202
    return hvd_spark.run(
        fn, args=args, num_proc=2, nics={"lo"}, use_gloo=True, env=dict(os.environ), verbose=0
    )


def _shard_ids(inputs: TrainInputs, seed: int) -> tuple[int, list[int]]:
    import horovod.torch as hvd

    hvd.init()
    data = LakeData(inputs, ReaderConf(batch_size=512), hvd.rank(), hvd.size())
    ids = [int(i) for b in data.train_batches(seed) for i in b.row_id]
    return hvd.rank(), ids


def test_each_rank_reads_a_disjoint_shard_and_together_every_row(spark, synthetic_lake) -> None:
    cfg = tiny(synthetic_lake[0])
    inputs = resolve_inputs(cfg)
    results = dict(run_on_executors(_shard_ids, inputs, 7))
    a, b = np.array(results[0]), np.array(results[1])
    assert len(a) and len(b) and len(np.intersect1d(a, b)) == 0
    train = Lake(cfg.lake.root).read(spark, "features").where(F.col("split") == "train")
    assert sorted(np.concatenate([a, b]).tolist()) == sorted(
        r[0] for r in train.select("row_id").collect()
    )


def test_two_processes_match_one_and_agree_on_stopping(spark, synthetic_lake) -> None:
    cfg = tiny(synthetic_lake[0], "train.max_epochs=4", "train.patience=1", "train.plots=false")
    single = train_model(cfg)
    # Half the batch on each of two ranks: the same global batch (the mean of the two ranks'
    # gradients) and the same number of steps as one process, so the same model up to data order.
    two = tiny(
        synthetic_lake[0],
        "train.max_epochs=4",
        "train.patience=1",
        "train.plots=false",
        "train.batch_size=256",
        "train.model_version=hvd2",
    )
    ranks = run_on_executors(_rank_main, two, resolve_inputs(two), False)
    assert [r.processes for r in ranks] == [2, 2]
    assert ranks[0].epochs_run == ranks[1].epochs_run and ranks[0].best_epoch == ranks[1].best_epoch
    assert ranks[0].metrics == ranks[1].metrics  # metrics are computed on the gathered shards
    assert ranks[0].metrics["valid.rows.pooled"] == single.metrics["valid.rows.pooled"]
    assert abs(ranks[0].metrics["valid.auc.pooled"] - single.metrics["valid.auc.pooled"]) < 0.005
    assert (Path(cfg.artifacts.root) / "hvd2" / "manifest.json").is_file()  # rank 0 wrote it


def test_torch_distributor_two_processes_match_one(spark, synthetic_lake) -> None:
    """train.backend=torch-distributor: 2 torch.distributed processes (Gloo) started by
    TorchDistributor, half the batch each, reach the single process's validation AUC."""
    from cdtm.train.launch import launch

    common = ["train.max_epochs=4", "train.patience=1", "train.plots=false"]
    single = train_model(tiny(synthetic_lake[0], *common))
    two = tiny(
        synthetic_lake[0],
        *common,
        "train.backend=torch-distributor",
        "train.num_proc=2",
        "train.batch_size=256",
        "train.model_version=td2",
    )
    result = launch(spark, two)
    assert result.processes == 2
    assert result.metrics["valid.rows.pooled"] == single.metrics["valid.rows.pooled"]
    assert abs(result.metrics["valid.auc.pooled"] - single.metrics["valid.auc.pooled"]) < 0.005
    assert (Path(two.artifacts.root) / "td2" / "manifest.json").is_file()
