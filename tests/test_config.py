from __future__ import annotations

from pathlib import Path

import pytest

from cdtm.config import ConfigError, EtlConf, TrainConf, build, load_config, resolve_path

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "conf" / "local.yaml"
ML1M = REPO / "conf" / "datasets" / "movielens-1m.yaml"


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_files_merge_in_order_and_overrides_win(tmp_path: Path) -> None:
    a = write(
        tmp_path,
        "a.yaml",
        "lake: {root: /a}\nartifacts: {root: /art}\nrun: {ds: '2024-01-01'}\netl: {min_count: 3}\n",
    )
    b = write(tmp_path, "b.yaml", "lake: {root: /b}\n")
    cfg = load_config([a, b], ["run.ds=2024-02-03", "etl.split.seed=7"])
    assert cfg.lake.root == "/b"
    assert cfg.lake.engine == "spark"  # default kept
    assert cfg.artifacts.root == "/art"
    assert cfg.run.ds == "2024-02-03"
    assert cfg.etl.min_count == 3
    assert cfg.etl.split.seed == 7 and cfg.etl.split.train == 0.8


def test_local_extends_base_and_dataset_loads() -> None:
    cfg = load_config([LOCAL, ML1M])
    assert cfg.spark.conf["spark.driver.host"] == "127.0.0.1"
    assert cfg.spark.conf["spark.sql.session.timeZone"] == "UTC"  # from base.yaml
    assert cfg.lake.root == "./lake" and cfg.artifacts.root == "./artifacts"
    assert cfg.dataset is not None and cfg.dataset.domain is not None
    assert cfg.dataset.domain.mapping == {
        "1": "0",
        "18": "0",
        "25": "1",
        "35": "2",
        "45": "2",
        "50": "2",
        "56": "2",
    }
    assert [f.name for f in cfg.dataset.fields] == [
        "user_id",
        "movie_id",
        "gender",
        "occupation",
        "zip",
        "genre",
    ]


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.yaml", "lake: {rooot: /x}\n")
    with pytest.raises(ConfigError, match=r"lake\.rooot: unknown key .*bad\.yaml"):
        load_config([LOCAL, bad])


def test_wrong_type_names_key_and_source() -> None:
    with pytest.raises(
        ConfigError, match=r"etl\.min_count: expected int, got str .*--set etl\.min_count"
    ):
        load_config([LOCAL], ["etl.min_count=many"])


def test_missing_key_is_named(tmp_path: Path) -> None:
    only_lake = write(tmp_path, "l.yaml", "lake: {root: /x}\nrun: {ds: '2024-01-01'}\n")
    with pytest.raises(ConfigError, match=r"^artifacts: missing key"):
        load_config([only_lake])


@pytest.mark.parametrize("ds", ["2024-13-01", "20240101", "yesterday", "2024-02-30"])
def test_run_ds_must_be_a_date(ds: str) -> None:
    with pytest.raises(ConfigError, match=r"run\.ds: .* is not a date"):
        load_config([LOCAL], [f"run.ds={ds}"])


def test_spark_conf_override_keeps_dotted_key_and_string_value() -> None:
    cfg = load_config(
        [LOCAL], ["spark.conf.spark.sql.shuffle.partitions=3", "spark.conf.spark.ui.enabled=false"]
    )
    assert cfg.spark.conf["spark.sql.shuffle.partitions"] == "3"
    assert cfg.spark.conf["spark.ui.enabled"] == "false"


def test_split_fractions_validated() -> None:
    with pytest.raises(ConfigError, match="sum to 1"):
        build(EtlConf, {"split": {"train": 0.9, "valid": 0.2, "test": 0.1}})


@pytest.mark.parametrize("ema", [1.0, -0.1])
def test_weight_average_decay_validated(ema: float) -> None:
    with pytest.raises(ConfigError, match="train.ema"):
        build(TrainConf, {"ema": ema})


def test_loss_weighting_and_domain_weights_validated() -> None:
    with pytest.raises(ConfigError, match="loss_weighting"):
        build(TrainConf, {"loss_weighting": "domain"})
    with pytest.raises(ConfigError, match="train.domain_loss_weights"):
        build(TrainConf, {"domain_loss_weights": {"0": 2.0, "1": -1.0}})


def test_dataset_field_with_undeclared_domain_fails() -> None:
    with pytest.raises(
        ConfigError, match=r"dataset\.fields\[zz\]\.domains: unknown domains \['9'\]"
    ):
        load_config([LOCAL, ML1M], ["dataset.fields=[{name: zz, domains: ['9']}]"])


def test_domain_bins_need_one_edge_fewer_than_names() -> None:
    with pytest.raises(ConfigError, match="3 domains need 2 bin edges"):
        load_config([LOCAL, ML1M], ["dataset.domain.mapping=null", "dataset.domain.bins=[10]"])


def test_extends_loop_is_refused(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config([a])


def test_resolve_path_env_default_and_ds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CDTM_X", raising=False)
    assert (
        resolve_path("${CDTM_X:-data}/day={ds}/e.csv", "2024-01-05") == "data/day=2024-01-05/e.csv"
    )
    monkeypatch.setenv("CDTM_X", "/mnt/in")
    assert resolve_path("${CDTM_X:-data}/e.csv") == "/mnt/in/e.csv"
    monkeypatch.delenv("CDTM_X")
    with pytest.raises(ConfigError, match="CDTM_X is not set"):
        resolve_path("${CDTM_X}/e.csv")


@pytest.mark.parametrize(
    "override, message",
    [
        ("etl.max_reject_rate=.nan", "etl.max_reject_rate: nan is not a finite number"),
        ("etl.max_reject_rate=1.5", "etl.max_reject_rate: 1.5 is out of range [0, 1]"),
        ("lake.min_vacuum_retention_hours=.nan", "lake.min_vacuum_retention_hours: nan is not"),
        ("lake.min_vacuum_retention_hours=-.inf", "is not a finite number"),
        ("lake.commit_retries=-1", "lake.commit_retries: -1 is out of range [0, inf]"),
        ("train.batch_size=0", "train.batch_size: 0 is out of range [1, inf]"),
        ("etl.min_count=-3", "etl.min_count: -3 is out of range [0, inf]"),
        ("train.max_epochs=-1", "train.max_epochs: -1 is out of range [1, inf]"),
        ("train.lr=[1,", "train.lr: cannot read '[1,' as a YAML value"),
        ("lake.root=/", "lake.root: '/' must name a folder other than '/'"),
        ("lake.root=", "lake.root: '' must name a folder"),
        ("lake.root=/dbfs/cdtm/lake", "the two engines would see different tables"),
        ("lake.schema=cdtm;drop", "lake.schema: 'cdtm;drop' must be a plain SQL name"),
    ],
)
def test_values_that_would_switch_off_a_guard_fail_at_load(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config([REPO / "conf" / "local.yaml"], [override])
    assert message in str(err.value), err.value
    assert f"(set in --set {override.split('=')[0]})" in str(err.value)


def test_a_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="artifacts.root: .* is a file, not a folder"):
        load_config([REPO / "conf" / "local.yaml"], [f"artifacts.root={f}"])
