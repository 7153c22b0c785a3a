"""Transform: assign each accepted row to train / valid / test.

``random``: a hash of the raw row and the seed, so a re-run assigns every row the same way
whatever the partitioning (the benchmark's random 80/10/10 split). ``time``: rows before the
``train`` quantile of the timestamp are train, then valid, then test. ``days``: which days
train and which are held out is decided when a model trains (the last days of its window); the
ETL writes the half each row takes when its day is held out (``valid`` or ``test``, by the hash
in the ratio valid:test), and a training reads every row of an earlier day.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cdtm.config import SplitConf

_BUCKETS = 1_000_000


def assign_split(df: DataFrame, conf: SplitConf, key: str = "_raw", ts: str = "ts") -> DataFrame:
    if conf.method in ("random", "days"):
        u = F.pmod(F.xxhash64(F.col(key), F.lit(conf.seed)), F.lit(_BUCKETS)) / F.lit(
            float(_BUCKETS)
        )
        if conf.method == "days":
            held = conf.valid / (conf.valid + conf.test)
            return df.withColumn("split", F.when(u < F.lit(held), "valid").otherwise("test"))
        lo, hi = F.lit(conf.train), F.lit(conf.train + conf.valid)
    else:
        u = F.col(ts)
        cuts = df.approxQuantile(ts, [conf.train, conf.train + conf.valid], 1e-4)
        if len(cuts) < 2:  # no rows
            cuts = [0.0, 0.0]
        lo, hi = F.lit(cuts[0]), F.lit(cuts[1])
    split = F.when(u < lo, "train").when(u < hi, "valid").otherwise("test")
    return df.withColumn("split", split)
