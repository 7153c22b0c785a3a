"""Experiment definitions, result summaries, and the paper command end to end on tiny data."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from cdtm.config import load_config
from cdtm.experiments import paper_variants, summarize, write_report
from tests.conftest import REPO


def test_paper_variants_cover_tasks_1_to_3_with_a_sparse_target() -> None:
    variants = paper_variants(
        ["0", "1", "2"], target="0", fraction=0.1, models=["cdtm", "dnn_single"]
    )
    labels = [(v.experiment, v.label) for v in variants]
    assert labels == [
        ("task1", "dnn_single:target-only"),
        ("task1", "cdtm:0+1"),
        ("task1", "cdtm:0+2"),
        ("task2", "cdtm:all-sources"),
        ("task3", "cdtm:no-attention"),
        ("task3", "cdtm:no-transfer"),
        ("task3", "cdtm:no-gse"),
        ("task3", "cdtm:no-align"),
    ]
    base = [REPO / "conf" / "local.yaml"]
    for v in variants:  # every variant is a valid config
        cfg = load_config(base, list(v.overrides))
        assert cfg.train.domain_fraction == {"0": 0.1} and cfg.train.early_stop_domain == "0"
    by = {v.label: load_config(base, list(v.overrides)) for v in variants}
    assert by["cdtm:0+2"].train.train_domains == ["0", "2"]
    assert by["dnn_single:target-only"].train.train_domains == ["0"]
    assert by["cdtm:no-attention"].model.cdtm.attention == "none"
    assert by["cdtm:no-attention"].model.cdtm.attention_init == 0.5  # the paper's A = 0.5 fixed
    assert by["cdtm:no-transfer"].model.cdtm.transfer == "identity"
    assert by["cdtm:no-gse"].model.cdtm.gse is False
    assert by["cdtm:no-align"].model.cdtm.align_weight == 0.0


def test_summary_means_and_stds_and_report(tmp_path: Path) -> None:
    def run(seed: int, auc: float) -> dict:
        m = {"auc": {"pooled": auc, "0": auc - 0.01}, "logloss": {"pooled": 0.5, "0": 0.5}}
        return {
            "experiment": "benchmark",
            "model": "cdtm",
            "seed": seed,
            "valid": m,
            "test": m,
            "seconds": 60.0,
        }

    summary = summarize([run(0, 0.80), run(1, 0.82), run(2, 0.84)])
    s = summary["benchmark"]["cdtm"]["test.auc.pooled"]
    assert abs(s["mean"] - 0.82) < 1e-12 and abs(s["std"] - 0.02) < 1e-12 and s["n"] == 3
    write_report({"runs": [], "summary": summary}, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "| cdtm | 3 | 0.8200 +- 0.0200 | 0.8100 +- 0.0200 | 1.0 |" in md
    assert (tmp_path / "results.png").stat().st_size > 1000


def test_paper_command_runs_end_to_end_on_tiny_synthetic_data(spark, tmp_path) -> None:  # noqa: ANN001
    """The `paper` command as a user types it (tiny data and model): every run lands in results.json."""
    import json

    from jobs.experiment import main

    out = tmp_path / "paper"
    rc = main(
        [
            "paper",
            "--out",
            str(out),
            "--datasets",
            "synthetic",
            "--models",
            "cdtm,dnn_single",
            "--seeds",
            "0",
            "--config",
            "conf/local.yaml",
            "--config",
            "conf/profiles/tiny.yaml",
            "--set",
            "dataset.source.synthetic.rows=4000",
            "--set",
            "train.max_epochs=1",
        ]
    )
    assert rc == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    labels = {(r["experiment"], r["model"]) for r in runs}
    assert ("synthetic:task1", "dnn_single:target-only") in labels
    assert ("synthetic:task2", "cdtm:all-sources") in labels
    assert {m for e, m in labels if e == "synthetic:task3"} == {
        "cdtm:no-attention",
        "cdtm:no-transfer",
        "cdtm:no-gse",
        "cdtm:no-align",
    }
    assert all(r["test"]["auc"]["pooled"] is not None for r in runs)
    assert (out / "results.md").is_file() and (out / "results.png").is_file()


def test_only_refuses_an_experiment_name_it_does_not_know(tmp_path: Path) -> None:
    import pytest

    from jobs.experiment import main

    args = ["beyond", "--out", str(tmp_path), "--datasets", "synthetic"]
    with pytest.raises(SystemExit) as e:
        main([*args, "--only", "negativ"])  # a typo must not run nothing quietly
    assert e.value.code == 2
    assert not (tmp_path / "results.json").exists()
    with pytest.raises(SystemExit) as e:
        main([*args, "--only", "disjoint,negativ"])  # nor drop one name of several quietly
    assert e.value.code == 2
    assert not (tmp_path / "results.json").exists()


def test_paper_checks_only_before_it_builds_a_lake(movielens_dir: Path, tmp_path: Path) -> None:
    """On real data the target is found in the lake the ETL builds: a typo in --only must stop
    the run before that ETL."""
    import pytest

    from jobs.experiment import main

    with pytest.raises(SystemExit) as e:
        main(["paper", "--out", str(tmp_path), "--datasets", "movielens-100k", "--only", "tsk1"])
    assert e.value.code == 2
    assert list(tmp_path.iterdir()) == []


def test_beyond_variants_answer_the_four_open_questions() -> None:
    from cdtm.experiments import beyond_variants

    vs = beyond_variants(sources=6)
    by_exp: dict[str, list] = {}
    for v in vs:
        by_exp.setdefault(v.experiment, []).append(v)
    assert set(by_exp) == {"sources", "transferable", "disjoint", "negative", "negative-reference"}
    # 1: target alone, then target + 1..6 sources, on a 7-domain generator.
    cdtm = [v for v in by_exp["sources"] if v.label.startswith("cdtm:")]
    assert [v.label for v in cdtm] == [f"cdtm:{k}-sources" for k in range(1, 7)]
    assert all(v.data == ("dataset.source.synthetic.domains=7",) for v in by_exp["sources"])
    assert "train.train_domains=['d6', 'd0', 'd1', 'd2', 'd3', 'd4', 'd5']" in cdtm[-1].overrides
    # 2: none / some / all transferable fields.
    assert [o for v in by_exp["transferable"] for o in v.overrides if "transferable" in o] == [
        "model.cdtm.transferable=[]",
        "model.cdtm.transferable=['user_id', 'item_id']",
        "model.cdtm.transferable=null",
    ]
    # 3 and 4: each with its own data, against single-domain and pooled DNNs.
    assert {v.data for v in by_exp["disjoint"]} == {
        ("dataset.source.synthetic.shared_fields=false",)
    }
    assert {v.data for v in by_exp["negative"]} == {
        ("dataset.source.synthetic.unrelated_domains=1",)
    }
    assert {v.label for v in by_exp["negative"]} == {
        "cdtm:all-sources",
        "shared_bottom:all-sources",
        "dnn_single:all-sources",
    }
    for v in vs:
        load_config(
            [REPO / "conf" / "local.yaml", REPO / "conf" / "datasets" / "synthetic.yaml"],
            [*v.data, *v.overrides],
        )  # every variant is a valid config


def test_beyond_on_real_data_makes_each_domain_the_target_and_adds_a_shuffled_source() -> None:
    from cdtm.experiments import beyond_real_variants

    configs = [REPO / "conf" / "local.yaml", REPO / "conf" / "datasets" / "movielens-1m.yaml"]
    dataset = load_config(configs, []).dataset
    assert dataset is not None
    vs = beyond_real_variants(dataset, 0.1)
    by_exp: dict[str, list] = {}
    for v in vs:
        by_exp.setdefault(v.experiment, []).append(v)
    assert set(by_exp) == {
        "negative",
        "transferable",
        "disjoint",
        "sources-0",
        "sources-1",
        "sources-2",
    }
    assert [v.label for v in by_exp["sources-1"]] == [
        "dnn_single:target-only",
        "cdtm:1+0",
        "cdtm:1+2",
        "cdtm:all-sources",
    ]
    assert all("train.domain_fraction={'1': 0.1}" in v.overrides for v in by_exp["sources-1"])
    for kind, key in (("shuffled", "shuffle_labels"), ("flipped", "flip_labels")):
        noisy = [v for v in by_exp["negative"] if kind in v.label]
        assert [v.label for v in noisy] == [f"cdtm:0+1+{kind}-2", f"shared_bottom:0+1+{kind}-2"]
        assert all(f"train.{key}=['2']" in v.overrides for v in noisy)
    assert [o[-1] for o in (v.overrides for v in by_exp["transferable"])] == [
        "model.cdtm.transferable=[]",
        "model.cdtm.transferable=['user_id', 'movie_id']",  # the user and item id fields
        "model.cdtm.transferable=null",
    ]
    for v in vs:
        load_config(configs, [*v.data, *v.overrides])  # every variant is a valid config
    # Disjoint: every field split into a target copy and a sources copy of the same column.
    split = load_config(configs, list(by_exp["disjoint"][0].data)).dataset
    assert split is not None and len(split.fields) == 2 * len(dataset.fields)
    for f in split.fields:
        assert f.domains == (["0"] if f.name.endswith("_t") else ["1", "2"])
        assert f.transferable == (f.name.endswith("_s"))
    assert {v.data_name for v in by_exp["disjoint"]} == {"disjoint"}


def _run(model: str, seed: int, split_seed: int, auc: float) -> dict:
    m = {"auc": {"pooled": auc, "a": auc + 0.01}, "logloss": {"pooled": 0.5, "a": 0.5}}
    return {
        "experiment": "benchmark",
        "model": model,
        "seed": seed,
        "split_seed": split_seed,
        "valid": m,
        "test": m,
        "seconds": 1.0,
    }


def test_paired_differences_pair_runs_by_both_seeds_with_a_t_interval(tmp_path: Path) -> None:
    from cdtm.experiments import paired

    # Shared-bottom's AUC swings with the seed; CDTM is above it by .002 +- .001 in each pair,
    # so the paired interval excludes 0 though the unpaired spreads overlap.
    gaps = [0.001, 0.003, 0.002, 0.002]
    base = [0.80, 0.83, 0.81, 0.82]
    keys = [(0, 0), (1, 0), (0, 1), (1, 1)]
    runs = [_run("shared_bottom", s, t, b) for (s, t), b in zip(keys, base)]
    runs += [_run("cdtm", s, t, b + g) for (s, t), b, g in zip(keys, base, gaps)]
    runs += [_run("cdtm:x", 0, 0, 0.5)]  # one pair only against cdtm: no interval
    got = paired(runs)["benchmark"]
    d = got["cdtm - shared_bottom"]["test.auc.pooled"]
    half = 3.182446305284263 * statistics.stdev(gaps) / 2  # t(0.975, 3) * s / sqrt(4)
    assert d["n"] == 4 and d["mean"] == pytest.approx(0.002)
    assert (d["lo"], d["hi"]) == pytest.approx((0.002 - half, 0.002 + half))
    assert d["lo"] > 0
    assert got["cdtm:x - cdtm"]["valid.auc.a"]["n"] == 1
    assert "shared_bottom - cdtm" not in got
    summary = summarize(runs)
    write_report({"runs": runs, "summary": summary, "paired": paired(runs)}, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert f"| cdtm - shared_bottom | 4 | +0.0020 [{d['lo']:+.4f}, {d['hi']:+.4f}]*" in md


def test_benchmark_variants_take_extra_lines_and_refuse_malformed_ones() -> None:
    from cdtm.experiments import benchmark_variants

    got = benchmark_variants(
        ["shared_bottom"], ["cdtm:fg=model.cdtm.gate=domain_field model.cdtm.attention_init=0.5"]
    )
    assert [(v.label, v.overrides) for v in got] == [
        ("shared_bottom", ("model.name=shared_bottom",)),
        (
            "cdtm:fg",
            ("model.name=cdtm", "model.cdtm.gate=domain_field", "model.cdtm.attention_init=0.5"),
        ),
    ]
    for bad in ("cdtm:fg", "nosuch:x=model.dropout=0.1", "cdtm=model.dropout=0.1"):
        with pytest.raises(ValueError, match="--variant"):
            benchmark_variants([], [bad])


def test_benchmark_on_a_users_spec_file_over_two_split_seeds(spark, tmp_path: Path) -> None:  # noqa: ANN001
    """--dataset-config takes any spec file; each split seed gets its own lake and the runs
    pair across training and split seeds."""
    import json

    from jobs.experiment import main

    out = tmp_path / "bench"
    args = [
        "benchmark",
        "--out",
        str(out),
        "--dataset-config",
        "conf/datasets/synthetic.yaml",
        "--models",
        "cdtm,shared_bottom",
        "--seeds",
        "0",
        "--split-seeds",
        "0,1",
        "--config",
        "conf/local.yaml",
        "--config",
        "conf/profiles/tiny.yaml",
        "--set",
        "dataset.source.synthetic.rows=3000",
        "--set",
        "train.max_epochs=1",
    ]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert sorted((r["model"], r["split_seed"]) for r in results["runs"]) == [
        ("cdtm", 0),
        ("cdtm", 1),
        ("shared_bottom", 0),
        ("shared_bottom", 1),
    ]
    assert (out / "lake-synthetic").is_dir() and (out / "lake-synthetic-split1").is_dir()
    # The two splits differ: the same seed's validation AUC is not repeated.
    by = {(r["model"], r["split_seed"]): r["valid"]["auc"]["pooled"] for r in results["runs"]}
    assert by[("cdtm", 0)] != by[("cdtm", 1)]
    pair = results["paired"]["benchmark"]["cdtm - shared_bottom"]["valid.auc.pooled"]
    assert pair["n"] == 2
    assert main(args) == 0  # a re-run finds every run done and trains nothing
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 4
