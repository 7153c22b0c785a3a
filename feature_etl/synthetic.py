"""Synthetic multi-domain click logs, generated in Spark, deterministic by seed.

Model of the data (D domains ``d0..d{D-1}``, the last one the sparse target):

- users and items have latent vectors p_u, q_i in R^L shared by all domains;
- domain d sees them through its own transform W_d = I + shift * N(0, 1/L):
  logit = signal * p_u^T W_d q_i + b_d + ctx effect + user-group effect (signal: 2);
- field sets differ: every domain has ``user_id``, ``item_id``, ``item_cat``; even domains
  also have ``user_group``; each domain has its own context field ``ctx_d<k>``;
- a field in two or more domains is transferable (shared in GSE); ``ctx_d<k>`` is not;
- ``unrelated_domains: N``: the first N domains click by factors of their own (negative
  transfer); ``shared_fields: false``: the target and the sources share no field.

Every random draw of a row is a hash of (seed, row id, purpose), so the output does not depend
on partitioning, and any row count can be generated.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from cdtm.config import (
    DatasetConf,
    DenseConf,
    DomainConf,
    FieldConf,
    KeysConf,
    LabelConf,
    SourceConf,
    SyntheticConf,
    TimestampConf,
    split_fields,
)

BASE_TS = 1704067200  # 2024-01-01T00:00:00Z
N_CTX = 8
N_GROUPS = 20
N_CATS = 15
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def domain_names(conf: SyntheticConf) -> list[str]:
    return [f"d{k}" for k in range(conf.domains)]


def _has_group(k: int) -> bool:
    return k % 2 == 0


def dataset_spec(conf: SyntheticConf) -> DatasetConf:
    """The dataset spec that describes the generator's output."""
    names = domain_names(conf)
    group_domains = [n for k, n in enumerate(names) if _has_group(k)]
    fields = [
        FieldConf(name="user_id", transferable=True, required=True),
        FieldConf(name="item_id", transferable=True, required=True),
        FieldConf(name="item_cat", transferable=True),
        FieldConf(name="user_group", domains=group_domains, transferable=len(group_domains) > 1),
    ]
    if not conf.shared_fields and len(names) > 1:
        # The target's fields and the sources' read the same columns but are different fields:
        # nothing is shared across the two sides.
        fields = split_fields(fields, names, names[-1])
    fields += [FieldConf(name=f"ctx_{n}", domains=[n]) for n in names]
    return DatasetConf(
        name="synthetic",
        source=SourceConf(format="synthetic", synthetic=conf),
        label=LabelConf(column="click"),
        domain=DomainConf(column="domain", names=names),
        timestamp=TimestampConf(column="ts", format="unix"),
        keys=KeysConf(user="user_id", item="item_id"),
        fields=fields,
        dense=[DenseConf(name="hour", min=0.0, max=23.0, column="hour")],
    )


def _splitmix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
        return z ^ (z >> np.uint64(31))


def uniform(ids: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """Deterministic U[0, 1) per id for a (seed, salt) stream."""
    with np.errstate(over="ignore"):
        key = ids.astype(np.uint64) * np.uint64(0x100000001B3) + np.uint64(seed * 1_000_003 + salt)
    h = _splitmix(_splitmix(key))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class _World:
    """The hidden parameters: factors, domain transforms, field effects."""

    def __init__(self, conf: SyntheticConf) -> None:
        rng = np.random.default_rng(conf.seed)
        dim = conf.latent_dim
        self.p = rng.normal(0, 1 / np.sqrt(dim), (conf.users, dim))
        self.q = rng.normal(0, 1 / np.sqrt(dim), (conf.items, dim))
        self.w = np.stack(
            [
                np.eye(dim) + conf.domain_shift * rng.normal(0, 1 / np.sqrt(dim), (dim, dim))
                for _ in range(conf.domains)
            ]
        )
        # Factors of the unrelated domains (negative transfer), from a stream of their own so
        # that every other draw, and so the related domains' data, stay as they were.
        alien = np.random.default_rng([conf.seed, 1])
        self.p_alien = alien.normal(0, 1 / np.sqrt(dim), (conf.users, dim))
        self.q_alien = alien.normal(0, 1 / np.sqrt(dim), (conf.items, dim))
        self.bias = rng.normal(0, 0.3, conf.domains)
        self.ctx = rng.normal(0, 0.5, (conf.domains, N_CTX))
        self.group = rng.normal(0, 0.5, N_GROUPS)
        self.hour = rng.normal(0, 0.3, conf.domains)
        share = np.full(conf.domains, (1 - conf.target_share) / max(conf.domains - 1, 1))
        share[-1] = conf.target_share if conf.domains > 1 else 1.0
        self.cum_share = np.cumsum(share)


def _rows(conf: SyntheticConf, ids: np.ndarray, world: _World) -> pd.DataFrame:
    names = domain_names(conf)
    u = [uniform(ids, conf.seed, s) for s in range(7)]
    dom = np.minimum(np.searchsorted(world.cum_share, u[0], side="right"), conf.domains - 1)
    user = np.minimum((conf.users * u[1] ** 1.5).astype(np.int64), conf.users - 1)
    item = np.minimum((conf.items * u[2] ** 2).astype(np.int64), conf.items - 1)
    ctx = (u[3] * N_CTX).astype(np.int64)
    secs = (u[4] * 86400).astype(np.int64)
    hour = secs // 3600
    group = user % N_GROUPS
    alien = (dom < conf.unrelated_domains)[:, None]
    p = np.where(alien, world.p_alien[user], world.p[user])
    q = np.where(alien, world.q_alien[item], world.q[item])
    wq = np.einsum("nij,nj->ni", world.w[dom], q)
    logit = conf.signal * np.sum(p * wq, axis=1) + world.bias[dom] + world.ctx[dom, ctx]
    has_group = np.array([_has_group(k) for k in range(conf.domains)])[dom]
    logit += np.where(has_group, world.group[group], 0.0) + world.hour[dom] * (hour / 23 - 0.5)
    click = (u[5] < 1 / (1 + np.exp(-logit))).astype(np.int64)

    out = pd.DataFrame(
        {
            "event_id": ids.astype(str),
            "user_id": np.char.add("u", user.astype(str)),
            "item_id": np.char.add("i", item.astype(str)),
            "domain": np.array(names)[dom],
            "click": click.astype(str),
            "ts": (BASE_TS + secs).astype(str),
            "hour": hour.astype(str),
            "item_cat": np.char.add("c", (item % N_CATS).astype(str)),
            "user_group": pd.Series(np.char.add("g", group.astype(str))).where(has_group, None),
        }
    )
    for k, n in enumerate(names):
        ctx_values: pd.Series = pd.Series(np.char.add(f"x{k}_", ctx.astype(str)))
        out[f"ctx_{n}"] = ctx_values.where(dom == k, None)
    return out


def generate(spark: SparkSession, conf: SyntheticConf) -> DataFrame:
    """``conf.rows`` events as string columns (the shape a CSV source would have)."""
    if conf.rows < 0 or conf.domains < 1 or conf.users < 1 or conf.items < 1:
        raise ValueError(
            f"synthetic generator: rows, domains, users and items must be positive ({conf})"
        )
    names = domain_names(conf)
    columns = [
        "event_id",
        "user_id",
        "item_id",
        "domain",
        "click",
        "ts",
        "hour",
        "item_cat",
        "user_group",
    ]
    columns += [f"ctx_{n}" for n in names]
    schema = ", ".join(f"`{c}` string" for c in columns)

    def gen(batches: Iterable[pd.DataFrame]) -> Iterable[pd.DataFrame]:
        world = _World(conf)
        for batch in batches:
            yield _rows(conf, batch["id"].to_numpy(), world)[columns]

    ids = spark.range(0, conf.rows, numPartitions=max(conf.partitions, 1))
    return ids.mapInPandas(gen, schema)
