"""Baselines in the same data and training path as CDTM.

- ``shared_bottom``: shared embeddings -> shared MLP (``bottom``) -> one tower per domain.
- ``dnn_single``: one DNN per domain (own embeddings, own MLP); parameters are disjoint, so
  one joint run trains D independent models on the same batches.
- ``mmoe``: shared embeddings -> ``experts`` MLPs -> a softmax gate per domain -> domain towers.
- ``star``: shared embeddings -> partitioned normalisation (STAR's PN: batch statistics, scale
  and shift = shared * domain, shared + domain) -> star-topology FCN (each layer's weight =
  shared * domain, bias = shared + domain) plus an auxiliary network on the domain indicator,
  added to the logit.
"""

from __future__ import annotations

import torch
from torch import nn

from cdtm.config import ModelConf
from cdtm.data.batch import Batch
from cdtm.model.base import CTRModel
from cdtm.model.cdtm import DomainSpecificEmbedding, GlobalSharedEmbedding
from cdtm.model.layers import (
    DomainTowers,
    PartitionedNorm,
    StarLinear,
    by_domain,
    mlp,
    undo_order,
)
from cdtm.spec import FeatureSpec


def _input_dim(spec: FeatureSpec, conf: ModelConf) -> int:
    return len(spec.fields) * conf.embed_dim + len(spec.dense)


class SharedBottom(CTRModel):
    def __init__(self, spec: FeatureSpec, conf: ModelConf) -> None:
        super().__init__()
        self.emb = GlobalSharedEmbedding(
            spec, conf.embed_dim, conf.embed_init_std, only_transferable=False
        )
        self.bottom, h = mlp(_input_dim(spec, conf), conf.bottom, conf.dropout)
        self.towers = DomainTowers(len(spec.domains), h, conf.tower, conf.dropout)
        self.interaction = conf.interaction == "fm"

    def forward_train(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch, order, counts = by_domain(batch, self.towers.n_domains)
        z = self.emb(batch.fields)
        x = torch.cat([z.flatten(1), batch.dense], dim=1)
        logits = self.with_interaction(self.towers(self.bottom(x), batch.domain, counts), z)
        return undo_order(logits, order), {}


class SingleDomainDNN(CTRModel):
    def __init__(self, spec: FeatureSpec, conf: ModelConf) -> None:
        super().__init__()
        self.emb = DomainSpecificEmbedding(spec, conf.embed_dim, conf.embed_init_std)
        # The whole MLP is per domain: bottom + tower layers in each domain's own tower.
        self.towers = DomainTowers(
            len(spec.domains), _input_dim(spec, conf), [*conf.bottom, *conf.tower], conf.dropout
        )
        self.interaction = conf.interaction == "fm"

    def forward_train(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch, order, counts = by_domain(batch, self.towers.n_domains)
        z = self.emb(batch.fields, batch.domain)
        x = torch.cat([z.flatten(1), batch.dense], dim=1)
        return undo_order(self.with_interaction(self.towers(x, batch.domain, counts), z), order), {}


class MMoE(CTRModel):
    def __init__(self, spec: FeatureSpec, conf: ModelConf) -> None:
        super().__init__()
        self.emb = GlobalSharedEmbedding(
            spec, conf.embed_dim, conf.embed_init_std, only_transferable=False
        )
        in_dim = _input_dim(spec, conf)
        experts = [mlp(in_dim, conf.bottom, conf.dropout) for _ in range(conf.experts)]
        self.experts = nn.ModuleList([e for e, _ in experts])
        h = experts[0][1]
        self.gates = nn.Linear(in_dim, conf.experts * len(spec.domains))
        self.n_experts = conf.experts
        self.towers = DomainTowers(len(spec.domains), h, conf.tower, conf.dropout)
        self.interaction = conf.interaction == "fm"

    def forward_train(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch, order, counts = by_domain(batch, self.towers.n_domains)
        z = self.emb(batch.fields)
        x = torch.cat([z.flatten(1), batch.dense], dim=1)
        outs = torch.stack([e(x) for e in self.experts], dim=1)  # [B, E, H]
        gates = self.gates(x).view(x.shape[0], self.towers.n_domains, self.n_experts)  # [B, D, E]
        gate = torch.softmax(gates[torch.arange(x.shape[0]), batch.domain], dim=-1)  # [B, E]
        h = (gate.unsqueeze(-1) * outs).sum(1)
        return undo_order(self.with_interaction(self.towers(h, batch.domain, counts), z), order), {}


class STAR(CTRModel):
    def __init__(self, spec: FeatureSpec, conf: ModelConf) -> None:
        super().__init__()
        n = len(spec.domains)
        self.emb = GlobalSharedEmbedding(
            spec, conf.embed_dim, conf.embed_init_std, only_transferable=False
        )
        dims = [_input_dim(spec, conf), *conf.bottom, *conf.tower]
        self.norm = PartitionedNorm(n, dims[0])
        self.layers = nn.ModuleList([StarLinear(n, a, b) for a, b in zip(dims[:-1], dims[1:])])
        self.head = StarLinear(n, dims[-1], 1)
        self.dropout = nn.Dropout(conf.dropout) if conf.dropout > 0 else nn.Identity()
        self.domain_emb = nn.Embedding(n, conf.embed_dim)
        self.aux, h = mlp(conf.embed_dim + dims[0], [64], conf.dropout)
        self.aux_head = nn.Linear(h, 1)
        self.interaction = conf.interaction == "fm"

    def forward_train(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z = self.emb(batch.fields)
        x = torch.cat([z.flatten(1), batch.dense], dim=1)
        h = self.norm(x, batch.domain)
        for layer in self.layers:
            h = self.dropout(torch.relu(layer(h, batch.domain)))
        main = self.head(h, batch.domain).squeeze(-1)
        aux = self.aux_head(self.aux(torch.cat([self.domain_emb(batch.domain), x], dim=1))).squeeze(
            -1
        )
        return self.with_interaction(main + aux, z), {}
