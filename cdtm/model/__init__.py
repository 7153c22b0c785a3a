"""CDTM and baselines. Torch only: never imports pyspark, petastorm or horovod."""

from __future__ import annotations

from cdtm.config import ModelConf
from cdtm.model.base import CTRModel
from cdtm.model.baselines import STAR, MMoE, SharedBottom, SingleDomainDNN
from cdtm.model.cdtm import CDTM
from cdtm.spec import FeatureSpec

MODELS: dict[str, type[CTRModel]] = {
    "cdtm": CDTM,
    "shared_bottom": SharedBottom,
    "dnn_single": SingleDomainDNN,
    "mmoe": MMoE,
    "star": STAR,
}


def build_model(spec: FeatureSpec, conf: ModelConf) -> CTRModel:
    try:
        cls = MODELS[conf.name]
    except KeyError:
        raise ValueError(
            f"model.name: unknown model {conf.name!r} (known: {sorted(MODELS)})"
        ) from None
    return cls(spec, conf)


__all__ = ["CDTM", "CTRModel", "MODELS", "build_model"]
