"""A field and a dense feature added to the dataset spec: the features table grows, older days
read them as absent (index 0) and 0, both older and newer models score, and a removed field is
refused by name."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from cdtm.config import DatasetConf, RunConf, build, load_config
from cdtm.lake import Lake
from tests.conftest import REPO
from tests.test_validate import SPEC

DAYS = ["2024-10-01", "2024-10-02", "2024-10-03"]
HEADER = "uid,ad,slot,clicked,when,query,tags,price"


def write_day(folder: Path, ds: str, rows: int = 400) -> None:
    lines = [HEADER] + [
        f"u{i % 30},a{i % 7},{'hs'[i % 2]},{(i * 7 % 3) // 2},{ds} 10:00:00,q{i % 3},"
        f"t{i % 4},{i % 90}"
        for i in range(rows)
    ]
    (folder / f"ev-{ds}.csv").write_text("\n".join(lines) + "\n")


def spec(tmp_path: Path, drop_fields: tuple[str, ...] = (), dense: bool = True) -> DatasetConf:
    raw = copy.deepcopy(SPEC)
    raw["source"] = {"format": "csv", "path": f"{tmp_path}/in/ev-{{ds}}.csv"}
    raw["fields"] = [f for f in raw["fields"] if f["name"] not in drop_fields]
    if not dense:
        raw["dense"] = []
    return build(DatasetConf, raw, prefix="dataset")


def config(tmp_path: Path, ds: str, dataset: DatasetConf, *overrides: str):  # noqa: ANN201
    cfg = load_config(
        [REPO / "conf" / "local.yaml", REPO / "conf" / "profiles" / "tiny.yaml"],
        [
            f"lake.root={tmp_path / 'lake'}",
            f"artifacts.root={tmp_path / 'art'}",
            "train.backend=single",
            "train.max_epochs=1",
            "train.plots=false",
            "train.batch_size=128",
            *overrides,
        ],
    )
    return dataclasses.replace(cfg, dataset=dataset, run=RunConf(ds))


def test_a_field_added_later_reads_as_absent_in_older_days(spark, tmp_path: Path) -> None:
    from cdtm.data.reader import FeatureReader
    from cdtm.lake import SchemaMismatchError
    from cdtm.scoring import score_day
    from cdtm.train.job import reader_conf, resolve_inputs
    from cdtm.train.launch import launch
    from feature_etl.etl import run_etl

    (tmp_path / "in").mkdir()
    for ds in DAYS:
        write_day(tmp_path / "in", ds)
    old_spec = spec(tmp_path, drop_fields=("tags",), dense=False)
    run_etl(spark, config(tmp_path, DAYS[0], old_spec))
    old_model = launch(None, config(tmp_path, DAYS[0], old_spec)).model_version

    new_spec = spec(tmp_path)  # adds the field tags and the dense feature price
    run_etl(spark, config(tmp_path, DAYS[1], new_spec))
    lake = Lake(str(tmp_path / "lake"))
    features = lake.read(spark, "features")
    assert features.columns[-2:] == ["f_tags", "dense_price"]  # appended, history not rewritten
    first = features.where(F.col("ds") == DAYS[0]).select("f_tags", "dense_price").distinct()
    assert [tuple(r) for r in first.collect()] == [(None, None)]

    # The training reader fills the columns older files lack: index 0 and 0.0.
    cfg = config(tmp_path, DAYS[1], new_spec)
    inputs = resolve_inputs(cfg)
    tags = [f.name for f in inputs.spec.fields].index("tags")
    day_of = {r["row_id"]: r["ds"] for r in features.select("row_id", "ds").collect()}
    seen: dict[str, list[np.ndarray]] = {d: [] for d in DAYS[:2]}
    for b in FeatureReader(
        inputs.files, inputs.spec, None, reader_conf(cfg, inputs.spec)
    ).batches():
        for ds in DAYS[:2]:
            rows = np.array([day_of[int(r)] == ds for r in b.row_id])
            seen[ds].append(np.c_[b.fields[rows, tags].numpy(), b.dense[rows, 0].numpy()])
    old_rows, new_rows = (np.concatenate(seen[d]) for d in DAYS[:2])
    assert len(old_rows) == len(new_rows) == 400
    assert (old_rows == 0).all()
    assert (new_rows[:, 0] >= 2).all() and new_rows[:, 1].max() > 0

    new_model = launch(None, cfg).model_version
    # The older model scores a newer day (it reads its own fields); the newer one an older day.
    report = score_day(spark, config(tmp_path, DAYS[1], new_spec, f"scoring.model={old_model}"))
    assert report.rows == 400
    report = score_day(spark, config(tmp_path, DAYS[0], new_spec, f"scoring.model={new_model}"))
    assert report.rows == 400

    # Drift reads the older day's missing column as absent: the new field shows as a shift.
    from cdtm.config import DriftConf
    from cdtm.drift import drift_report

    drift = drift_report(str(tmp_path / "lake"), inputs.spec, DAYS[1], DriftConf())
    assert drift["home"]["volume_ratio"] == pytest.approx(1.0)
    assert drift["home"]["field_psi"]["tags"] > 1.0 and drift["home"]["flagged"]
    assert drift["home"]["field_psi"]["uid"] == pytest.approx(0.0)
    assert drift["home"]["score_psi"] is not None

    # Removing a field from the spec would drop a column older days hold: refused by name.
    version = lake.version("features")
    with pytest.raises(SchemaMismatchError, match=r"columns \['f_query'\] of the table"):
        run_etl(spark, config(tmp_path, DAYS[2], spec(tmp_path, drop_fields=("query",))))
    assert lake.version("features") == version
