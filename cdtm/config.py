"""YAML configuration -> frozen, validated dataclasses.

Files are merged in order (later files win, mappings merge key by key, lists are replaced),
then ``--set key=value`` overrides apply (the value is parsed as YAML). A file may name a
parent with ``extends: base.yaml`` (relative to itself). Every key is checked against the
dataclasses below: an unknown key, a missing key or a value of the wrong type fails at load
time with the key's dotted name and the file that set it.

Stable keys other tools rely on: ``lake.root``, ``artifacts.root``, ``run.ds``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml


class ConfigError(ValueError):
    """A configuration problem, naming the key and where it was set."""


# --------------------------------------------------------------------------- schema


@dataclasses.dataclass(frozen=True)
class SparkConf:
    master: str = "local[*]"
    app_name: str = "cdtm"
    conf: dict[str, str] = dataclasses.field(default_factory=dict)
    # Where a session this project starts keeps its metastore (Derby) and managed tables, so
    # that tables registered by one job are found by name in the next. "": in-memory catalog.
    # Sessions a cluster provides keep their own metastore (Unity Catalog on Databricks).
    warehouse: str = ""


@dataclasses.dataclass(frozen=True)
class LakeConf:
    root: str
    engine: Literal["delta-rs", "spark"] = "spark"
    # Another writer committed the same table first: 0 fails with ConcurrentWriteError;
    # N > 0 commits again up to N times (this write's day then replaces the other's).
    commit_retries: int = 0
    # jobs/maintain.py vacuum refuses a shorter retention unless --force: a reader of an older
    # version, or a job still writing, would lose its files.
    min_vacuum_retention_hours: float = 168.0
    # Tables are registered in the metastore as [<catalog>.]<schema>.<name> (null: not at all);
    # catalog is Unity Catalog's first level, null for Spark's own (local) metastore.
    catalog: str | None = None
    schema: str | None = "cdtm"

    def __post_init__(self) -> None:
        check_root("lake.root", self.root)
        if self.root.rstrip("/") == "/dbfs" or self.root.startswith("/dbfs/"):
            raise ConfigError(
                f"lake.root: {self.root!r} is refused: on Databricks Spark reads a /dbfs/ path "
                "as a folder of DBFS while delta-rs reads the driver's local FUSE mount, so the "
                "two engines would see different tables. Use a URI (dbfs:/..., s3://..., "
                "abfss://...) under a Unity Catalog external location."
            )
        for key in ("catalog", "schema"):
            value = getattr(self, key)
            if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
                raise ConfigError(
                    f"lake.{key}: {value!r} must be a plain SQL name (letters, digits, _)"
                )


@dataclasses.dataclass(frozen=True)
class ArtifactsConf:
    root: str

    def __post_init__(self) -> None:
        check_root("artifacts.root", self.root)


def check_root(key: str, root: str) -> None:
    """A folder the project writes under: not empty, not ``/``, not an existing file."""
    if not root.strip() or root.strip().rstrip("/") == "":
        raise ConfigError(f"{key}: {root!r} must name a folder other than '/'")
    if "://" not in root and not root.startswith("dbfs:") and os.path.isfile(root):
        raise ConfigError(f"{key}: {root!r} is a file, not a folder")


_SIMPLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_name(key: str, value: str) -> None:
    """A folder or table name taken from config: one path segment, so that nothing is written
    or read outside lake.root / artifacts.root."""
    if not _SIMPLE_NAME.fullmatch(value) or ".." in value:
        raise ConfigError(
            f"{key}: {value!r} must be a plain name (letters, digits, '.', '_', '-'; no '/' or '..')"
        )


@dataclasses.dataclass(frozen=True)
class RunConf:
    ds: str = ""
    # The run's own date (a scheduler's start date): where ds is empty, ds is the day before it,
    # the last whole day of events.
    today: str | None = None

    def __post_init__(self) -> None:
        if not self.ds:
            if not self.today:
                raise ConfigError("run.ds: empty, and no run.today whose day before to take")
            _check_date("run.today", self.today)
            day_before = dt.date.fromisoformat(self.today) - dt.timedelta(days=1)
            object.__setattr__(self, "ds", day_before.isoformat())
        _check_date("run.ds", self.ds)


def _check_date(key: str, value: str) -> None:
    try:
        dt.date.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(f"{key}: {value!r} is not a date (YYYY-MM-DD)") from None
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(value)):
        raise ConfigError(f"{key}: {value!r} is not a date (YYYY-MM-DD)")


@dataclasses.dataclass(frozen=True)
class SplitConf:
    # random: a hash of the row, by seed | time: by timestamp quantiles within the day |
    # days: the last holdout_days days of the training window are validation and test (their
    # rows split valid:test by the hash), every earlier day of the window is training; decided
    # when a model trains, so a day is held out tonight and trained on tomorrow.
    method: Literal["random", "time", "days"] = "random"
    seed: int = 0
    train: float = 0.8
    valid: float = 0.1
    test: float = 0.1
    holdout_days: int = 1  # method: days

    def __post_init__(self) -> None:
        total = self.train + self.valid + self.test
        if abs(total - 1.0) > 1e-9 or min(self.train, self.valid, self.test) < 0:
            raise ConfigError(
                f"etl.split: train/valid/test must be >= 0 and sum to 1 (got {total:g})"
            )
        if self.method == "days" and self.valid + self.test <= 0:
            raise ConfigError("etl.split.method=days: valid + test must be above 0")


@dataclasses.dataclass(frozen=True)
class EtlConf:
    max_reject_rate: float = 0.05
    min_count: int = 1
    # extend: append this day's new values (indices never move); build: index from scratch,
    # only on a lake with no features yet; rebuild: index from scratch over this day and every
    # stored day, and rewrite them all in one commit; reuse: the stored vocabulary as it is.
    vocab: Literal["extend", "build", "rebuild", "reuse"] = "extend"
    split: SplitConf = dataclasses.field(default_factory=SplitConf)
    output_partitions: int = 0  # 0: let Spark decide


@dataclasses.dataclass(frozen=True)
class SourceConf:
    """Where raw events come from. ``{ds}`` in a path is replaced by ``run.ds``."""

    format: Literal["csv", "parquet", "recbole", "synthetic"]
    path: str | None = None
    files: dict[str, str] | None = None  # path -> domain, for "one domain per input file"
    # csv: every file has a header row; recbole: tab-separated "name:type" header
    delimiter: str = ","
    quote: str = '"'
    # csv: a quoted field may hold newlines (one row). false reads big files in parallel splits,
    # but a quoted newline then breaks its row in two.
    multiline: bool = True
    joins: list[JoinConf] = dataclasses.field(default_factory=list)
    synthetic: SyntheticConf | None = None


@dataclasses.dataclass(frozen=True)
class JoinConf:
    """A side table (users, items) joined to the events on a key column."""

    path: str
    on: str
    format: Literal["csv", "parquet", "recbole"] | None = None  # default: the source's


@dataclasses.dataclass(frozen=True)
class SyntheticConf:
    rows: int = 20000
    domains: int = 3
    seed: int = 0
    users: int = 2000
    items: int = 1000
    latent_dim: int = 8
    target_share: float = 0.05  # the last domain is the sparse target
    domain_shift: float = 0.5  # how far each domain's transform is from the shared one
    signal: float = 2.0  # weight of the user x item factor term in the click logit
    partitions: int = 4
    # Negative transfer: the first N domains click by latent factors of their own, unrelated
    # to the others'.
    unrelated_domains: int = 0
    # False: the target and the sources share no field (each side its own user_id, item_id...).
    shared_fields: bool = True


@dataclasses.dataclass(frozen=True)
class LabelConf:
    column: str
    threshold: float | None = None  # label = value >= threshold; None: a 0/1 column


@dataclasses.dataclass(frozen=True)
class DomainConf:
    names: list[str]
    column: str | None = None
    mapping: dict[str, str] | None = None  # raw value -> domain name
    # numeric value: v < bins[0] -> names[0], ... >= bins[-1] -> names[-1]
    bins: list[float] | None = None
    # A multi-valued column ("Drama|Comedy"): its first token, then mapping, picks the domain.
    first_token_sep: str | None = None

    def __post_init__(self) -> None:
        if self.mapping is not None and self.bins is not None:
            raise ConfigError("dataset.domain: give mapping or bins, not both")
        if self.bins is not None and len(self.bins) != len(self.names) - 1:
            raise ConfigError(
                f"dataset.domain.bins: {len(self.names)} domains need {len(self.names) - 1} "
                f"bin edges, got {len(self.bins)}"
            )
        if self.bins is not None and sorted(self.bins) != self.bins:
            raise ConfigError("dataset.domain.bins: edges must be increasing")
        if self.mapping is not None:
            unknown = sorted(set(self.mapping.values()) - set(self.names))
            if unknown:
                raise ConfigError(f"dataset.domain.mapping: maps to undeclared domains {unknown}")


@dataclasses.dataclass(frozen=True)
class TimestampConf:
    column: str
    format: str = "unix"  # "unix" (seconds), "unix_ms", or a Spark datetime pattern


@dataclasses.dataclass(frozen=True)
class KeysConf:
    user: str
    item: str


@dataclasses.dataclass(frozen=True)
class FieldConf:
    """One categorical feature field."""

    name: str
    column: str | None = None  # default: name
    domains: list[str] | None = None  # None: every domain
    transferable: bool = False
    required: bool = False
    min_count: int | None = None  # default: etl.min_count
    hash_buckets: int = 0  # > 0: hash into this many buckets instead of a vocabulary
    token_sep: str | None = None  # multi-valued string: keep the first token

    @property
    def source_column(self) -> str:
        return self.column or self.name


def split_fields(fields: Sequence[FieldConf], names: Sequence[str], target: str) -> list[FieldConf]:
    """``fields`` with nothing shared between ``target`` and the other domains: each field
    becomes a target copy (``<name>_t``) and a sources copy (``<name>_s``) of the same column;
    a copy stays transferable where it still spans two or more domains."""
    sides = {"t": [target], "s": [d for d in names if d != target]}
    out = []
    for f in fields:
        for side, members in sides.items():
            doms = [d for d in (f.domains or names) if d in members]
            if doms:
                out.append(
                    dataclasses.replace(
                        f,
                        name=f"{f.name}_{side}",
                        column=f.source_column,
                        domains=doms,
                        transferable=f.transferable and len(doms) > 1,
                    )
                )
    return out


@dataclasses.dataclass(frozen=True)
class DenseConf:
    """One numeric feature, scaled to [0, 1] by its declared range (clipped)."""

    name: str
    min: float
    max: float
    column: str | None = None
    domains: list[str] | None = None

    @property
    def source_column(self) -> str:
        return self.column or self.name


@dataclasses.dataclass(frozen=True)
class DatasetConf:
    name: str
    source: SourceConf
    label: LabelConf | None = None
    domain: DomainConf | None = None
    timestamp: TimestampConf | None = None
    keys: KeysConf | None = None
    fields: list[FieldConf] = dataclasses.field(default_factory=list)
    dense: list[DenseConf] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.source.format == "synthetic":
            return  # the generator declares its own label, domains and fields
        # No timestamp: rows get ts = null and only the random split is possible.
        for key in ("label", "domain", "keys"):
            if getattr(self, key) is None:
                raise ConfigError(
                    f"dataset.{key}: missing (required for a {self.source.format} source)"
                )
        if not self.fields:
            raise ConfigError("dataset.fields: at least one feature field is required")
        names = [f.name for f in self.fields] + [d.name for d in self.dense]
        for n in names:
            # A field becomes the column f_<name> (dense_<name>) of Delta tables and SQL.
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n):
                raise ConfigError(
                    f"dataset.fields[{n}].name: {n!r} must be a plain column name (letters, "
                    "digits, _); give the input column as `column:` if its name is not"
                )
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"dataset.fields: duplicate field names {dupes}")
        domain_names = set(self.domain.names) if self.domain else set()
        members: list[FieldConf | DenseConf] = [*self.fields, *self.dense]
        for f in members:
            unknown = set(f.domains or []) - domain_names
            if unknown:
                raise ConfigError(
                    f"dataset.fields[{f.name}].domains: unknown domains {sorted(unknown)} "
                    f"(declared: {sorted(domain_names)})"
                )
        if self.domain and self.domain.column is None and not self.source.files:
            raise ConfigError(
                "dataset.domain: give a column, or map input files to domains in dataset.source.files"
            )


@dataclasses.dataclass(frozen=True)
class CdtmConf:
    """CDTM's own switches; the ablations of the paper's Task 3 are settings of these."""

    gse: bool = True  # False: DSE only (ablation "without GSE")
    transfer: Literal["domain", "domain_field", "identity"] = "domain"  # identity: T = I fixed
    attention: Literal["vector", "scalar", "none"] = "vector"  # none: A = attention_init fixed
    # The combination gate's parameters (V1, b1): one set per domain, shared by its fields, or
    # one per (domain, field), so that each field can lean on its own or the shared view.
    gate: Literal["domain", "domain_field"] = "domain"
    # A at initialisation (b1 = logit of it; V1 = 0): the starting weight on DSE. Screened on
    # MovieLens-1M (docs/what-was-tried.md): 0.02 beat 0.1 and 0.5, whose DSE overfits early.
    attention_init: float = 0.02
    align_weight: float = 1.0  # lambda of the alignment loss; 0: ablation "without alignment"
    # What the alignment loss moves. "both" (default, the paper's reading: T is fitted by the
    # distance): DSE, T and GSE; it is also lowered by shrinking T g and DSE together, which
    # regularises (MovieLens-1M: pooled AUC .8140 vs .8133 with "dse") but starves FM's
    # pairwise term: with model.interaction=fm use "dse", DSE pulled toward T g only.
    # "transfer": only T g is fitted to DSE (T and GSE move). "transfer_matrix": only T moves
    # (MODEL.md: "T is fitted by minimising the distance"), DSE and GSE learn from clicks alone.
    align_moves: Literal["both", "transfer", "transfer_matrix", "dse"] = "both"
    # The gate and T get no weight decay (it pulls T toward 0 and the gate toward A = 0.5);
    # T is regularised toward the identity instead: transfer_reg * ||T - I||^2. Chosen on
    # validation (movielens-1m-genres, seed 0, docs/what-was-tried.md): 1e-5 .8116, 1e-2
    # .8152, 1 .8158 (= T fixed to I); a T free to learn bends the shared embeddings.
    transfer_reg: float = 1.0
    # The deep layer: "shared" (one bottom MLP), or "star" (STAR's shared x per-domain weights:
    # partial sharing, each domain its own path from the input beside the shared one).
    bottom: Literal["shared", "star"] = "shared"
    # Which of the spec's transferable fields get a GSE table: null = all of them, [] = none.
    transferable: list[str] | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.attention_init < 1.0:
            raise ConfigError(
                f"model.cdtm.attention_init: must be in (0, 1), got {self.attention_init}"
            )
        if not self.transfer_reg >= 0:
            raise ConfigError(f"model.cdtm.transfer_reg: must be >= 0, got {self.transfer_reg}")


@dataclasses.dataclass(frozen=True)
class ModelConf:
    name: Literal["cdtm", "shared_bottom", "dnn_single", "mmoe", "star"] = "cdtm"
    embed_dim: int = 16
    embed_init_std: float = 1e-4
    bottom: list[int] = dataclasses.field(default_factory=lambda: [256, 128])  # shared layers
    tower: list[int] = dataclasses.field(default_factory=lambda: [64])  # per-domain layers
    dropout: float = 0.0
    experts: int = 4  # mmoe
    # "fm": add the pairwise inner products of the field embeddings to the logit (every model)
    interaction: Literal["none", "fm"] = "none"
    cdtm: CdtmConf = dataclasses.field(default_factory=CdtmConf)


@dataclasses.dataclass(frozen=True)
class TrainConf:
    batch_size: int = 4096
    max_epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 1e-5
    # Validate and keep a moving average of the weights: the mean of all steps until
    # 1 / (1 - ema) batches, then exponential with this decay per batch (per step of one
    # process; N ranks: ema ** N per step); 0: off.
    ema: float = 0.999
    patience: int = 4  # epochs without a better validation AUC before stopping
    seed: int = 0
    early_stop_domain: str | None = None  # None: pooled validation AUC
    # The click loss: "rows" weighs every training row alike (the pooled mean BCE, the
    # benchmark protocol's loss); "domains" weighs every domain alike (the mean over the
    # batch's domains of each domain's mean BCE: MODEL.md's sum_d mean BCE_d divided by the
    # number of domains, so the alignment weight keeps its meaning). domain_loss_weights
    # multiplies a domain's share (a row's, under "rows"); unnamed domains weigh 1.
    loss_weighting: Literal["rows", "domains"] = "rows"
    domain_loss_weights: dict[str, float] = dataclasses.field(default_factory=dict)
    checkpoint_every: int = 0  # steps between checkpoints; 0: at epoch ends only
    log_every: int = 50  # steps between progress lines
    max_steps_per_epoch: int = 0  # 0: the whole training split (tiny profiles set it)
    backend: Literal["single", "horovod-spark", "horovodrun", "torch-distributor"] = "single"
    num_proc: int = 2  # horovod-spark, torch-distributor: training processes Spark starts
    nics: list[str] | None = (
        None  # Horovod's interfaces, e.g. [lo] on one machine; None: Horovod picks
    )
    scale_lr: bool = False  # multiply lr by the number of processes
    amp: bool = False  # bfloat16 autocast (on GPU)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # torch intra-op threads per training process. auto: the cores this process may run on
    # divided by the training processes on this machine (oversubscribed threads spin); 0:
    # torch's default (every core, whatever else runs).
    threads: int | Literal["auto"] = "auto"
    shuffle_buffer: int = 200_000
    reader_workers: int = 0  # 0: synchronous, deterministic reader
    train_domains: list[str] | None = None  # train on these domains only (None: all)
    domain_fraction: dict[str, float] = dataclasses.field(
        default_factory=dict
    )  # keep this share of a domain's train rows
    # Experiments only: these domains' training labels are permuted (a source with no signal)
    # or inverted (a source whose tastes are the opposite of the others').
    shuffle_labels: list[str] = dataclasses.field(default_factory=list)
    flip_labels: list[str] = dataclasses.field(default_factory=list)
    features_version: int | None = None  # None: the latest version of the features table
    window_days: int | None = None  # train on the N days up to run.ds; None: every stored day
    # Start from an earlier model's weights: "champion" or a model version (its embedding rows
    # for the values it knew, the rest as initialised); None: from scratch.
    warm_start: str | None = None
    model_version: str | None = None  # None: "<model>-<run.ds>-<UTC time>"
    plots: bool = True

    def __post_init__(self) -> None:
        if self.model_version is not None:
            check_name("train.model_version", self.model_version)
        if self.warm_start is not None:
            check_name("train.warm_start", self.warm_start)
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"train.ema: {self.ema} must be in [0, 1) (0: off, e.g. 0.999)")
        negative = {d: w for d, w in self.domain_loss_weights.items() if not w >= 0}
        if negative:
            raise ConfigError(f"train.domain_loss_weights: {negative} must be >= 0")


@dataclasses.dataclass(frozen=True)
class TrackingConf:
    """MLflow: a local file store by default; ``databricks`` on a Databricks workspace."""

    enabled: bool = True
    uri: str = "./mlruns"
    experiment: str = "cdtm"
    registered_model: str | None = "cdtm"  # None: log runs but do not register versions


@dataclasses.dataclass(frozen=True)
class CandidatesConf:
    """Unlabelled rows of the dataset's shape (its keys, domain and field columns, no label)."""

    format: Literal["csv", "parquet", "delta", "table"]
    path: str | None = None  # csv, parquet, delta: file, folder or glob; {ds} is the day
    table: str | None = None  # table: a metastore name (rows of run.ds where it has a ds column)
    delimiter: str = ","
    quote: str = '"'

    def __post_init__(self) -> None:
        if self.format == "table" and not self.table:
            raise ConfigError("scoring.candidates.table: required for format: table")
        if self.format != "table" and not self.path:
            raise ConfigError(f"scoring.candidates.path: required for format: {self.format}")


@dataclasses.dataclass(frozen=True)
class ScoringConf:
    # latest | champion (the nightly pipeline's, cdtm.champion) | a model_version folder name |
    # alias:<alias of tracking.registered_model> |
    # models:/<registered model>@<alias> | models:/<registered model>/<version>
    model: str = "latest"
    table: str = "features"  # lake table whose rows of run.ds are scored
    evaluate: bool = True  # labelled rows: also AUC and calibration per domain in the report
    # Unlabelled candidate rows to score instead of the table's (scored with the model's own
    # vocabulary; bad rows quarantined in candidate_rejects). None: score ``table``.
    candidates: CandidatesConf | None = None

    def __post_init__(self) -> None:
        check_name("scoring.table", self.table)
        if self.model.startswith("models:/"):
            if not re.fullmatch(r"models:/[A-Za-z0-9_.-]+(@[A-Za-z0-9_-]+|/\d+)", self.model):
                raise ConfigError(
                    f"scoring.model: {self.model!r} must be models:/<name>@<alias> or "
                    "models:/<name>/<version>"
                )
        elif self.model != "latest" and not self.model.startswith("alias:"):
            check_name("scoring.model", self.model)


@dataclasses.dataclass(frozen=True)
class DriftConf:
    trailing_days: int = 7  # volume and CTR are compared with the mean of these days before
    ratio_limit: float = 2.0  # flag a volume or CTR ratio above this or below its inverse
    psi_threshold: float = 0.2  # flag a score or field PSI above this (0.1-0.25: moderate)
    fields: list[str] | None = None  # fields whose value PSI is reported; None: every field


@dataclasses.dataclass(frozen=True)
class PipelineConf:
    # always: train a challenger every night | reuse: score with the champion (train one
    # only where there is none)
    train: Literal["always", "reuse"] = "always"
    # A challenger replaces the champion unless its validation AUC on the same rows is below
    # the champion's by more than this.
    promote_tolerance: float = 0.0
    drift: DriftConf = dataclasses.field(default_factory=DriftConf)
    fail_on_drift: bool = False  # a flagged drift fails the night (exit 3) after its summary


@dataclasses.dataclass(frozen=True)
class Config:
    lake: LakeConf
    artifacts: ArtifactsConf
    run: RunConf
    spark: SparkConf = dataclasses.field(default_factory=SparkConf)
    etl: EtlConf = dataclasses.field(default_factory=EtlConf)
    dataset: DatasetConf | None = None
    model: ModelConf = dataclasses.field(default_factory=ModelConf)
    train: TrainConf = dataclasses.field(default_factory=TrainConf)
    tracking: TrackingConf = dataclasses.field(default_factory=TrackingConf)
    scoring: ScoringConf = dataclasses.field(default_factory=ScoringConf)
    pipeline: PipelineConf = dataclasses.field(default_factory=PipelineConf)


# --------------------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps dates as strings: ``run.ds`` is validated by RunConf."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in rules if tag != "tag:yaml.org,2002:timestamp"]
    for ch, rules in yaml.SafeLoader.yaml_implicit_resolvers.items()
}

T = TypeVar("T")


def load_config(paths: Sequence[str | os.PathLike[str]], overrides: Sequence[str] = ()) -> Config:
    """Merge YAML files in order, apply ``key=value`` overrides, validate into a Config."""
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for path in paths:
        _merge(merged, origin, _read_yaml(Path(path)), "", str(path))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value")
        key = key.strip()
        if key.startswith("spark.conf."):  # Spark's own keys hold dots; values stay strings
            parts, value = ["spark", "conf", key[len("spark.conf.") :]], raw
        else:
            parts = key.split(".")
            try:
                value = yaml.load(raw, Loader=_Loader) if raw.strip() else ""
            except yaml.YAMLError as e:
                problem = getattr(e, "problem", None) or str(e).splitlines()[0]
                raise ConfigError(
                    f"{key}: cannot read {raw!r} as a YAML value ({problem}) (set in --set {key})"
                ) from None
        patch: Any = value
        for part in reversed(parts):
            patch = {part: patch}
        _merge(merged, origin, patch, "", f"--set {key}")
    return build(Config, merged, origin)


def build(cls: type[T], data: Any, origin: Mapping[str, str] | None = None, prefix: str = "") -> T:
    """Validate a plain mapping into the dataclass ``cls``; errors name key and source."""
    return typing.cast(T, _convert(cls, data, prefix, dict(origin or {})))


def to_dict(obj: Any) -> Any:
    """A dataclass tree back to plain data (for artifacts and logs)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return obj


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'extends' loops back on itself")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    base = _read_yaml(path.parent / str(parent), (*seen, path.resolve()))
    _merge(base, {}, data, "", str(path))
    return base


def _merge(
    dst: dict[str, Any], origin: dict[str, str], src: Mapping[str, Any], prefix: str, where: str
) -> None:
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(dst.get(key), dict):
            _merge(dst[key], origin, value, dotted + ".", where)
        else:
            dst[key] = _copy(value)
        origin[dotted] = where


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _where(origin: Mapping[str, str], key: str) -> str:
    probe = key
    while probe:
        base = re.sub(r"\[[^\]]*\]$", "", probe)
        if base in origin:
            return f" (set in {origin[base]})"
        probe = base.rpartition(".")[0] if base == probe else base
    return ""


def _fail(origin: Mapping[str, str], key: str, msg: str) -> ConfigError:
    return ConfigError(f"{key}: {msg}{_where(origin, key)}")


def _convert(tp: Any, value: Any, key: str, origin: Mapping[str, str]) -> Any:
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _convert_dataclass(tp, value, key, origin)
    org = typing.get_origin(tp)
    args = typing.get_args(tp)
    if org in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors: list[ConfigError] = []
        for a in inner:
            try:
                return _convert(a, value, key, origin)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise _fail(origin, key, f"{value!r} fits none of {inner}")
    if org is Literal:
        if value not in args:
            raise _fail(origin, key, f"{value!r} is not one of {list(args)}")
        return value
    if org is list:
        if not isinstance(value, list):
            raise _fail(origin, key, f"expected a list, got {type(value).__name__}")
        return [_convert(args[0], v, f"{key}[{i}]", origin) for i, v in enumerate(value)]
    if org is dict:
        if not isinstance(value, Mapping):
            raise _fail(origin, key, f"expected a mapping, got {type(value).__name__}")
        return {str(k): _convert(args[1], v, f"{key}.{k}", origin) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # YAML reads 42 as an int where a name or code is meant
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise _fail(
                origin, key, f"expected {tp.__name__}, got {type(value).__name__} {value!r}"
            )
        if tp in (int, float):
            _check_range(value, key, origin)
        return value
    raise _fail(origin, key, f"unsupported type {tp}")


# Numeric keys whose guards a bad value would switch off: (low, high), both inclusive; None is
# open. Every float must also be finite (a NaN compares False with every bound).
RANGES: dict[str, tuple[float | None, float | None]] = {
    "etl.max_reject_rate": (0, 1),
    "etl.min_count": (0, None),
    "etl.output_partitions": (0, None),
    "etl.split.train": (0, 1),
    "etl.split.valid": (0, 1),
    "etl.split.test": (0, 1),
    "etl.split.holdout_days": (1, None),
    "train.window_days": (1, None),
    "lake.commit_retries": (0, None),
    "lake.min_vacuum_retention_hours": (0, None),
    "train.batch_size": (1, None),
    "train.max_epochs": (1, None),
    "train.num_proc": (1, None),
    "train.lr": (0, None),
    "train.weight_decay": (0, None),
    "train.ema": (0, 1),
    "train.patience": (0, None),
    "train.checkpoint_every": (0, None),
    "train.log_every": (0, None),
    "train.max_steps_per_epoch": (0, None),
    "train.threads": (0, None),
    "train.shuffle_buffer": (0, None),
    "train.reader_workers": (0, None),
    "model.embed_dim": (1, None),
    "model.embed_init_std": (0, None),
    "model.dropout": (0, 1),
    "model.experts": (1, None),
    "model.cdtm.align_weight": (0, None),
    "model.cdtm.attention_init": (0, 1),
    "pipeline.promote_tolerance": (0, 1),
    "pipeline.drift.trailing_days": (1, None),
    "pipeline.drift.ratio_limit": (1, None),
    "pipeline.drift.psi_threshold": (0, None),
}


def _check_range(value: float, key: str, origin: Mapping[str, str]) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(origin, key, f"{value!r} is not a finite number")
    low, high = RANGES.get(key, (None, None))
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise _fail(origin, key, f"{value!r} is out of range {span}")


def _convert_dataclass(cls: type, value: Any, key: str, origin: Mapping[str, str]) -> Any:
    label = key or "config"
    if not isinstance(value, Mapping):
        raise _fail(origin, label, f"expected a mapping, got {type(value).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{key}." if key else ""
    unknown = sorted(set(value) - set(fields))
    if unknown:
        bad = f"{prefix}{unknown[0]}"
        raise _fail(origin, bad, f"unknown key (allowed here: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], prefix + name, origin)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}: missing key{_where(origin, key) if key else ''}")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{e}{_where(origin, key)}") from None


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def resolve_path(path: str, ds: str | None = None) -> str:
    """Expand ``${VAR}`` / ``${VAR:-default}``, ``~`` and ``{ds}`` in a configured path."""

    def env(m: re.Match[str]) -> str:
        value = os.environ.get(m.group(1)) or m.group(2)
        if value is None:
            raise ConfigError(f"path {path!r}: environment variable {m.group(1)} is not set")
        return value

    out = os.path.expanduser(_ENV.sub(env, path))
    return out.replace("{ds}", ds) if ds else out
