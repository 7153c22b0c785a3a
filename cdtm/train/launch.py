"""Start training with the backend the config names (``train.backend``).

- ``single``: this process, no Horovod import.
- ``horovod-spark``: ``horovod.spark.run`` starts ``train.num_proc`` ranks as Spark tasks;
  each reads its own Petastorm shard of the features version; rank 0 writes the artifact.
- ``horovodrun``: this process is one rank of a job started by ``horovodrun``.
- ``torch-distributor``: PyTorch's ``TorchDistributor`` (in pyspark) starts ``train.num_proc``
  torch.distributed processes (Gloo on CPU, NCCL on GPU): on the driver under a local master,
  as Spark barrier tasks on a cluster. The backend where a runtime ships no Horovod.

Horovod's rendezvous and Gloo traffic use the interfaces in ``train.nics`` (``[lo]`` in
conf/local.yaml: one machine, loopback only).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cdtm.config import Config
from cdtm.train.job import TrainInputs, TrainResult, resolve_inputs, train_model
from cdtm.train.tracking import TrackingError, track

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LaunchResult:
    model_version: str
    artifact: Path
    metrics: dict[str, float | None]
    processes: int
    best_epoch: int
    epochs_run: int


def _summary(r: TrainResult, processes: int) -> LaunchResult:
    return LaunchResult(
        r.model_version, r.artifact, r.metrics, processes, r.fit.best_epoch, r.fit.epochs_run
    )


def _rank_main(cfg: Config, inputs: TrainInputs, resume: bool) -> LaunchResult:
    """Runs inside each Horovod process (a Spark task for horovod-spark)."""
    from cdtm.train.distributed import HorovodBackend

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    backend = HorovodBackend()
    return _summary(train_model(cfg, inputs=inputs, resume=resume, backend=backend), backend.size)


def _torch_rank_main(cfg: Config, inputs: TrainInputs, resume: bool) -> LaunchResult:
    """Runs inside each TorchDistributor process; its return value is rank 0's."""
    from cdtm.train.distributed import TorchBackend

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    backend = TorchBackend()
    try:
        result = train_model(cfg, inputs=inputs, resume=resume, backend=backend)
        return _summary(result, backend.size)
    finally:
        backend.close()


def _torch_distributor(
    spark: SparkSession, cfg: Config, inputs: TrainInputs, resume: bool
) -> LaunchResult:
    import torch
    from pyspark.ml.torch.distributor import TorchDistributor

    local = (spark.sparkContext.master or "").startswith("local")
    gpu = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
    log.info(
        "starting %d torch.distributed processes with TorchDistributor (%s, %s, nics %s)",
        cfg.train.num_proc,
        "on the driver" if local else "as Spark barrier tasks",
        "NCCL" if gpu else "Gloo",
        cfg.train.nics,
    )
    # Gloo's interface; the processes inherit it from the driver (local mode).
    saved = os.environ.get("GLOO_SOCKET_IFNAME")
    if cfg.train.nics:
        os.environ["GLOO_SOCKET_IFNAME"] = cfg.train.nics[0]
    try:
        distributor = TorchDistributor(
            num_processes=cfg.train.num_proc, local_mode=local, use_gpu=gpu
        )
        result = distributor.run(_torch_rank_main, cfg, inputs, resume)
    finally:
        if saved is None:
            os.environ.pop("GLOO_SOCKET_IFNAME", None)
        else:
            os.environ["GLOO_SOCKET_IFNAME"] = saved
    if not isinstance(result, LaunchResult):
        raise RuntimeError(f"TorchDistributor returned {result!r}, not rank 0's result")
    return result


def launch(spark: SparkSession | None, cfg: Config, *, resume: bool = False) -> LaunchResult:
    """Train with ``train.backend``, then track the run in MLflow from this process (the
    driver: executors carry no workspace credentials). A tracking failure raises
    ``TrackingError`` naming the complete artifact, which is kept."""
    result = _train(spark, cfg, resume)
    if cfg.train.backend == "horovodrun" and result.processes > 1:
        import horovod.torch as hvd

        if hvd.rank() != 0:
            return result  # every horovodrun rank runs this: rank 0 alone tracks
    try:
        track(cfg, result.model_version, result.artifact)
    except Exception as e:  # noqa: BLE001 - any MLflow failure: the model is safe, say so
        raise TrackingError(
            f"the model trained and its artifact is complete at {result.artifact}, but MLflow "
            f"tracking at {cfg.tracking.uri!r} failed: {type(e).__name__}: "
            f"{(str(e).strip().splitlines() or [''])[0][:300]}"
        ) from e
    return result


def _train(spark: SparkSession | None, cfg: Config, resume: bool) -> LaunchResult:
    backend = cfg.train.backend
    if backend == "single":
        return _summary(train_model(cfg, resume=resume), 1)
    inputs = resolve_inputs(cfg)
    if backend == "horovodrun":
        return _rank_main(cfg, inputs, resume)

    if spark is None:
        raise ValueError(f"train.backend={backend} needs a SparkSession")
    if backend == "torch-distributor":
        return _torch_distributor(spark, cfg, inputs, resume)
    try:
        import horovod.spark
    except ImportError as e:
        raise RuntimeError(
            "train.backend=horovod-spark needs Horovod: run `make horovod`, or train in one "
            f"process with --set train.backend=single ({e})"
        ) from e

    env = dict(os.environ)
    if cfg.train.nics:
        env["HOROVOD_GLOO_IFACE"] = cfg.train.nics[0]
    log.info(
        "starting %d Horovod processes on Spark executors (nics %s)",
        cfg.train.num_proc,
        cfg.train.nics,
    )
    results: list[Any] = horovod.spark.run(
        _rank_main,
        args=(cfg, inputs, resume),
        num_proc=cfg.train.num_proc,
        nics=set(cfg.train.nics) if cfg.train.nics else None,
        env=env,
        use_gloo=True,
        stdout=sys.stdout,
        stderr=sys.stderr,
        verbose=1,
    )
    return results[0]
