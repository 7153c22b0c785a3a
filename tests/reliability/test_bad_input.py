"""Bad input: every malformed row is quarantined with the right reason and nothing is lost;
bad paths, days, configs and run dates fail fast, name what is wrong and write nothing."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdtm.config import ConfigError, DatasetConf, build, load_config
from cdtm.lake import Lake
from feature_etl.sources import SourceError, read_events
from feature_etl.validate import validate
from tests.conftest import REPO
from tests.test_validate import SPEC, dataset

HEADER = "uid,ad,slot,clicked,when,query,tags,price"
GOOD = ["u1", "a1", "h", "1", "2024-01-01 10:00:00", "q", "red|big", "50"]
SAFE = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=12)


# kind -> (expected reason or None for accepted, a strategy of raw CSV lines as bytes)
def _line(values: list[str]) -> bytes:
    return ",".join(values).encode()


def _with(index: int, value: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    return value.map(lambda v: _line([*GOOD[:index], v, *GOOD[index + 1 :]]))


KINDS: dict[str, tuple[str | None, st.SearchStrategy[bytes]]] = {
    "valid": (None, st.builds(lambda u, a: _line([u, a, *GOOD[2:]]), SAFE, SAFE)),
    "null_required": (
        "missing_field",
        st.sampled_from([0, 1, 2, 3, 4]).map(
            lambda i: _line([*GOOD[:i], st_empty(i), *GOOD[i + 1 :]])
        ),
    ),
    "unknown_domain": ("unknown_domain", _with(2, SAFE.filter(lambda v: v not in ("h", "s")))),
    "bad_label": ("bad_label", _with(3, st.sampled_from(["yes", "2", "-1", "0.5", "nan", "1e9"]))),
    "bad_timestamp": (
        "bad_timestamp",
        _with(
            4,
            st.sampled_from(
                ["not a time", "2024-13-45 99:99:99", "1704067200", "2024/01/01 10:00"]
            ),
        ),
    ),
    "wrong_type": (
        "bad_value",
        _with(7, SAFE.filter(lambda v: not v.replace("e", "").isdigit()).map(lambda v: "x" + v)),
    ),
    "extra_columns": (
        "malformed_row",
        st.integers(1, 3).map(lambda n: _line([*GOOD, *["extra"] * n])),
    ),
    "missing_columns": ("malformed_row", st.integers(1, 5).map(lambda n: _line(GOOD[:-n]))),
    "huge_string": (None, st.integers(10_000, 200_000).map(lambda n: _line(["u" * n, *GOOD[1:]]))),
    "non_utf8": (
        None,
        st.sampled_from([b"\xff\xfe", b"\xc3\x28", b"\x80abc"]).map(
            lambda b: b"u1,a1,h,1,2024-01-01 10:00:00," + b + b",red,50"
        ),
    ),
    "non_utf8_label": ("bad_label", st.just(b"u1,a1,h,1\xff,2024-01-01 10:00:00,q,red,50")),
}


def st_empty(index: int) -> str:
    return ["", " ", ""][index % 3]


row = st.sampled_from(sorted(KINDS)).flatmap(lambda k: KINDS[k][1].map(lambda line: (k, line)))


def test_generated_malformed_rows_are_all_accounted_for(spark, tmp_path: Path) -> None:
    tried: Counter[str] = Counter()

    @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
    @given(rows=st.lists(row, min_size=1, max_size=30))
    def check(rows: list[tuple[str, bytes]]) -> None:
        path = tmp_path / "events.csv"
        path.write_bytes(b"\n".join([HEADER.encode(), *[line for _, line in rows]]) + b"\n")
        ds = dataset(path)
        out = validate(read_events(spark, ds, "2024-01-01"), ds)
        got = Counter({r["_reason"]: r["count"] for r in out.groupBy("_reason").count().collect()})
        want = Counter(KINDS[k][0] for k, _ in rows)
        assert sum(got.values()) == len(rows)  # nothing lost, nothing invented
        assert got == want, (got, want, rows)
        tried.update(k for k, _ in rows)

    check()
    print("malformed rows tried by kind:", dict(sorted(tried.items())))
    assert set(tried) == set(KINDS), f"kinds never generated: {set(KINDS) - set(tried)}"


def _etl_cfg(lake: Path, *overrides: str):  # noqa: ANN202
    files = [REPO / "conf" / "local.yaml", REPO / "conf" / "datasets" / "movielens-100k.yaml"]
    return load_config(files, [f"lake.root={lake}", *overrides])


def test_missing_input_path_fails_naming_it_and_writes_nothing(spark, tmp_path: Path) -> None:
    from feature_etl.etl import run_etl

    missing = tmp_path / "nowhere" / "events.csv"
    cfg = _etl_cfg(tmp_path / "lake", f"dataset.source.path={missing}", "dataset.source.joins=[]")
    with pytest.raises(SourceError, match=str(missing)):
        run_etl(spark, cfg)
    assert not (tmp_path / "lake").exists() or not Lake(str(tmp_path / "lake")).exists("features")


def test_input_paths_go_through_hadoop_file_systems(spark, tmp_path: Path) -> None:
    """A URI or a glob is looked up by Hadoop (where a cluster reads it), not on local disk."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text(HEADER + "\n" + ",".join(GOOD) + "\n")
    for path in (f"file://{tmp_path}/in/a.csv", f"{tmp_path}/in/*.csv"):
        assert read_events(spark, dataset(path), "2024-01-01").count() == 1, path
    with pytest.raises(SourceError, match=r"input not found: file://.*/in/b\*\.csv"):
        read_events(spark, dataset(f"file://{tmp_path}/in/b*.csv"), "2024-01-01")
    with pytest.raises(SourceError, match=r"cannot list nosuchfs://bucket/events\.csv"):
        read_events(spark, dataset("nosuchfs://bucket/events.csv"), "2024-01-01")


def test_empty_day_fails_and_writes_nothing(spark, tmp_path: Path) -> None:
    from feature_etl.etl import EtlError, run_etl

    path = tmp_path / "events.csv"
    path.write_text(HEADER + "\n")
    cfg = load_config([REPO / "conf" / "local.yaml"], [f"lake.root={tmp_path / 'lake'}"])
    import dataclasses

    cfg = dataclasses.replace(cfg, dataset=dataset(path))
    with pytest.raises(EtlError, match="no rows; nothing written"):
        run_etl(spark, cfg)
    assert not Lake(str(tmp_path / "lake")).exists("features")


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batch_sise=10", "train.batch_sise"),
        ("run.ds=2024-02-30", "run.ds: '2024-02-30' is not a date"),
        ("run.ds=yesterday", "run.ds: 'yesterday' is not a date"),
    ],
)
def test_bad_config_fails_at_load_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config([REPO / "conf" / "local.yaml"], [override])


def test_csv_files_are_read_by_their_own_headers(spark, tmp_path: Path) -> None:
    """Column order differs between files: read by name. A file without a spec column that
    the others have: every row a missing_column reject naming it. Quoted newlines: one row."""
    day = tmp_path / "day"
    day.mkdir()
    (day / "a.csv").write_text(HEADER + "\nu1,a1,h,1,2024-01-01 10:00:00,q,t,50\n")
    (day / "b.csv").write_text(
        "ad,uid,when,clicked,slot,price,tags,query\n"
        "a2,u2,2024-01-01 11:00:00,0,s,10,t,shoes\n"
        'a3,u3,2024-01-01 12:00:00,1,s,20,t,"two\nlines"\n'
    )
    (day / "c.csv").write_text(
        "uid,ad,slot,clicked,when,query,tags\nu4,a4,h,1,2024-01-01 13:00:00,q,t\n"
        "u5,a5,h,1,2024-01-01 13:00:00,q,t\n"
    )
    ds = dataset(day)
    out = validate(read_events(spark, ds, "2024-01-01"), ds)
    got = {
        r["user_key"]: (r["item_key"], r["_reason"], r["_field"], r["_v_query"])
        for r in out.collect()
    }
    assert got == {
        "u1": ("a1", None, None, None),  # home has no query field
        "u2": ("a2", None, None, "shoes"),
        "u3": ("a3", None, None, "two\nlines"),
        "u4": ("a4", "missing_column", "price", None),
        "u5": ("a5", "missing_column", "price", None),
    }


def test_a_column_no_file_has_is_the_specs_error(spark, tmp_path: Path) -> None:
    from feature_etl.validate import DatasetError

    path = tmp_path / "events.csv"
    path.write_text(HEADER.replace(",price", "") + "\nu1,a1,h,1,2024-01-01 10:00:00,q,t\n")
    ds = dataset(path)
    with pytest.raises(DatasetError, match="price"):
        validate(read_events(spark, ds, "2024-01-01"), ds)


def test_field_names_that_are_no_column_names_are_config_errors() -> None:
    spec = {**SPEC, "fields": [*SPEC["fields"], {"name": "a/b", "column": "tags"}]}
    with pytest.raises(ConfigError, match=r"dataset.fields\[a/b\].name: 'a/b' must be a plain"):
        build(DatasetConf, spec, prefix="dataset")


def test_an_unexpected_error_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """Nothing the job expects (a CSV file read as Parquet): exit 1, one line that says what
    failed and where the traceback went, no traceback on the console."""
    from tests.reliability.helpers import run_job

    path = tmp_path / "events.csv"
    path.write_text(HEADER + "\nu1,a1,h,1,2024-01-01 10:00:00,q,t,50\n")
    args = ["jobs/etl.py", "--config", "conf/local.yaml", "--config"]
    args += ["conf/datasets/movielens-100k.yaml", "--set", f"lake.root={tmp_path / 'lake'}"]
    for s in (f"dataset.source.path={path}", "dataset.source.format=parquet"):
        args += ["--set", s]
    log = tmp_path / "etl.log"
    os.environ["CDTM_LOG_DIR"] = str(tmp_path / "logs")
    try:
        rc, _ = run_job([*args, "--set", "dataset.source.joins=[]"], log)
    finally:
        del os.environ["CDTM_LOG_DIR"]
    out = log.read_text()
    last = out.strip().splitlines()[-1]
    assert rc == 1 and last.startswith("etl failed: "), out[-3000:]
    assert "Traceback" not in out
    traceback_file = Path(last.rsplit("(traceback: ", 1)[1].rstrip(")"))
    assert traceback_file.parent == tmp_path / "logs"
    assert "Traceback (most recent call last)" in traceback_file.read_text()
    assert not (tmp_path / "lake").exists() or not Lake(str(tmp_path / "lake")).exists("features")
