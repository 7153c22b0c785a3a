"""Transform: validate raw string events and parse them into typed columns.

``validate(events, dataset)`` adds, for every row:

- ``_reason`` / ``_field``: the first rule the row breaks (null when accepted) and the
  field, column or file it concerns. Reason codes, in the order they are checked:
  ``missing_column`` (the row's file lacks spec columns other files have), ``malformed_row``, ``unmatched_join``, ``missing_field``, ``unknown_domain``,
  ``bad_label``, ``bad_timestamp``, ``bad_value``.
- ``domain`` (int, index into ``dataset.domain.names``), ``label`` (0/1), ``ts`` (unix
  seconds), ``user_key``, ``item_key``,
- ``_v_<field>``: the normalised string value of each categorical field (null where the
  row's domain lacks the field or the value is empty),
- ``dense_<name>``: each numeric field scaled to [0, 1] by its declared range (0 where absent).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from cdtm.config import DatasetConf, DomainConf, FieldConf
from feature_etl.sources import MISSING, spec_columns

REASONS = (
    "missing_column",
    "malformed_row",
    "unmatched_join",
    "missing_field",
    "unknown_domain",
    "bad_label",
    "bad_timestamp",
    "bad_value",
)


class DatasetError(ValueError):
    """The events do not have the columns the dataset spec names."""


def value_column(field: FieldConf) -> str:
    return f"_v_{field.name}"


def _clean(col: str) -> Column:
    """Trimmed string (spaces, tabs and the CR of a CRLF line end); empty -> null."""
    c = F.expr(f"trim(BOTH ' \\t\\r\\n' FROM {_ident(col)})")
    return F.when(c == "", None).otherwise(c)


def _ident(col: str) -> str:
    return "`" + col.replace("`", "``") + "`"


def _num(col: str) -> Column:
    """The column parsed as a double; null when empty or not a number.

    try_cast: a bad number is null (a reject), also where ANSI mode makes cast() raise.
    """
    return F.expr(f"try_cast(nullif(trim({_ident(col)}), '') as double)")


def _finite(num: Column) -> Column:
    """A parsed number that is neither null, NaN nor infinite ('inf' and '1e400' parse as
    infinity: a rating of 1e400 is no click and a price of inf is no price)."""
    return num.isNotNull() & ~F.isnan(num) & (F.abs(num) != F.lit(float("inf")))


def domain_index(domain: DomainConf, raw_col: str) -> Column:
    """Domain name of a raw value (mapping, bins or the value itself) -> its index, or null."""
    raw = _clean(raw_col)
    if domain.first_token_sep:
        raw = F.element_at(F.split(raw, _regex_literal(domain.first_token_sep)), 1)
        raw = F.when(raw == "", None).otherwise(raw)
    if domain.bins is not None:
        v = _num(raw_col)
        name: Column = F.lit(domain.names[-1])
        for edge, n in reversed(list(zip(domain.bins, domain.names))):
            name = F.when(v < F.lit(edge), F.lit(n)).otherwise(name)
        name = F.when(v.isNull() | F.isnan(v), None).otherwise(name)
    elif domain.mapping is not None:
        mapping = F.create_map(*[F.lit(x) for kv in domain.mapping.items() for x in kv])
        # Numeric codes read from different sources as "25" or "25.0" map alike.
        as_int = F.regexp_replace(raw, r"^(-?\d+)\.0+$", "$1")
        name = F.coalesce(mapping[raw], mapping[as_int])
    else:
        name = raw
    index = F.lit(None).cast("int")
    for i, n in reversed(list(enumerate(domain.names))):
        index = F.when(name == F.lit(n), F.lit(i)).otherwise(index)
    return index


def validate(events: DataFrame, dataset: DatasetConf, labelled: bool = True) -> DataFrame:
    """``labelled=False``: candidate rows, which carry no label (and need no timestamp)."""
    assert dataset.label and dataset.domain and dataset.keys
    label, domain, keys = dataset.label, dataset.domain, dataset.keys
    ts_conf = dataset.timestamp if labelled else None
    missing = sorted(spec_columns(dataset, labelled) - set(events.columns))
    if missing:
        raise DatasetError(
            f"dataset {dataset.name!r}: columns {missing} named in the spec are not in the input "
            f"(it has {sorted(c for c in events.columns if not c.startswith('_'))})"
        )

    dom = domain_index(domain, domain.column or "_domain_from_file")

    label_num = _num(label.column)
    label_val: Column
    if not labelled:
        label_val = F.lit(None).cast("int")
    elif label.threshold is not None:
        label_val = F.when(_finite(label_num), (label_num >= F.lit(label.threshold)).cast("int"))
    else:
        label_val = F.when(label_num.isin(0.0, 1.0), label_num.cast("int"))

    ts_val: Column
    if ts_conf is None:  # a spec without a timestamp: ts stays null (random split only)
        ts_val = F.lit(None).cast("long")
    elif ts_conf.format in ("unix", "unix_ms"):
        scale = 1000.0 if ts_conf.format == "unix_ms" else 1.0
        ts_num = _num(ts_conf.column)
        ts_val = F.when(F.isnan(ts_num) | (F.abs(ts_num) > F.lit(1e13 * scale)), None).otherwise(
            F.floor(ts_num / F.lit(scale)).cast("long")
        )
    else:
        fmt = ts_conf.format.replace("'", "''")
        parsed = F.expr(f"try_to_timestamp(trim({_ident(ts_conf.column)}), '{fmt}')")
        ts_val = F.unix_timestamp(parsed)

    ts_bad = ts_val.isNull() if ts_conf is not None else F.lit(False)

    # Required: label, domain column, timestamp, user and item keys, and fields marked required.
    required = [label.column] if labelled else []
    required += [keys.user, keys.item]
    if ts_conf is not None:
        required.append(ts_conf.column)
    if domain.column:
        required.append(domain.column)
    required += [f.source_column for f in dataset.fields if f.required]
    missing_first: Column = F.lit(None).cast("string")
    for col in reversed(list(dict.fromkeys(required))):
        missing_first = F.when(_clean(col).isNull(), F.lit(col)).otherwise(missing_first)

    bad_dense: Column = F.lit(None).cast("string")
    dense_cols = []
    for d in reversed(dataset.dense):
        raw = _clean(d.source_column)
        num = _num(d.source_column)
        in_domain = _in_domain(dom, domain, d.domains)
        bad = raw.isNotNull() & ~_finite(num) & in_domain
        bad_dense = F.when(bad, F.lit(d.source_column)).otherwise(bad_dense)
    for d in dataset.dense:
        num = _num(d.source_column)
        span = d.max - d.min if d.max > d.min else 1.0
        scaled = F.least(F.greatest((num - F.lit(d.min)) / F.lit(span), F.lit(0.0)), F.lit(1.0))
        keep = _in_domain(dom, domain, d.domains) & _finite(num)
        dense_cols.append(
            F.when(keep, scaled).otherwise(F.lit(0.0)).cast("float").alias(f"dense_{d.name}")
        )

    reason = (
        F.when(F.col(MISSING).isNotNull(), F.lit("missing_column"))
        .when(F.col("_corrupt").isNotNull(), F.lit("malformed_row"))
        .when(F.col("_unmatched").isNotNull(), F.lit("unmatched_join"))
        .when(missing_first.isNotNull(), F.lit("missing_field"))
        .when(dom.isNull(), F.lit("unknown_domain"))
        .when(label_val.isNull() & F.lit(labelled), F.lit("bad_label"))
        .when(ts_bad, F.lit("bad_timestamp"))
        .when(bad_dense.isNotNull(), F.lit("bad_value"))
    )
    field = (
        F.when(F.col(MISSING).isNotNull(), F.col(MISSING))
        .when(F.col("_corrupt").isNotNull(), F.lit(None))
        .when(F.col("_unmatched").isNotNull(), F.col("_unmatched"))
        .when(missing_first.isNotNull(), missing_first)
        .when(dom.isNull(), F.lit(domain.column or "_file"))
        .when(label_val.isNull() & F.lit(labelled), F.lit(label.column))
        .when(ts_bad, F.lit(ts_conf.column if ts_conf else None))
        .when(bad_dense.isNotNull(), bad_dense)
    )

    value_cols = []
    for f in dataset.fields:
        v = _clean(f.source_column)
        if f.token_sep:
            v = F.element_at(F.split(v, _regex_literal(f.token_sep)), 1)
            v = F.when(v == "", None).otherwise(v)
        v = F.when(_in_domain(dom, domain, f.domains), v)
        value_cols.append(v.alias(value_column(f)))

    # Only meta and parsed columns leave: a source column may itself be called "domain" or "label".
    return events.select(
        "_raw",
        "_file",
        reason.alias("_reason"),
        field.alias("_field"),
        dom.alias("domain"),
        label_val.alias("label"),
        ts_val.alias("ts"),
        _clean(keys.user).alias("user_key"),
        _clean(keys.item).alias("item_key"),
        *value_cols,
        *dense_cols,
    )


def _in_domain(dom: Column, domain: DomainConf, names: list[str] | None) -> Column:
    if names is None:
        return F.lit(True)
    return dom.isin([domain.names.index(n) for n in names])


def _regex_literal(sep: str) -> str:
    return "".join("\\" + ch if ch in r".^$*+?{}[]\|()" else ch for ch in sep)
