"""CDTM: Centralized-Distributed Transfer Model (Xu et al., ICDM 2022), as MODEL.md reads it.

For a row of domain d with fields F_d, transferable fields C_d:
  e_f = DSE_d[f](x_f)                     domain-specific embedding, every f in F_d
  g_f = GSE[f](x_f)                       global shared embedding, f in C_d
  m_f = T_d g_f                           transfer matrix, k x k per domain (init I)
  A_f = sigmoid(V1_d [e_f; m_f] + b1_d)   combination attention (V1 = 0, A = attention_init at init);
                                          gate: domain_field gives each (d, f) its own V1, b1
  z_f = A_f * e_f + (1 - A_f) * m_f       f in C_d;  z_f = e_f for f in F_d \\ C_d
  logit = tower_d(bottom(concat(z, dense)))   bottom: shared MLP, or STAR's shared x domain
Alignment loss: lambda * mean over rows and present f in C_d of ||e_f - m_f||^2; it moves
e, T and g (``align_moves: both``), or e only (``dse``), T g only (``transfer``) or T only
(``transfer_matrix``). T is regularised by transfer_reg * ||T - I||^2; neither T nor the gate
has weight decay (``no_decay_parameters``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import nn

from cdtm.config import ModelConf
from cdtm.data.batch import Batch
from cdtm.model.base import CTRModel
from cdtm.model.layers import (
    DomainTowers,
    SegmentedEmbedding,
    StarMLP,
    by_domain,
    domain_order,
    mlp,
    undo_order,
)
from cdtm.spec import FeatureSpec


class DomainSpecificEmbedding(SegmentedEmbedding):
    """DSE: one table per (domain, field of that domain)."""

    def __init__(self, spec: FeatureSpec, dim: int, init_std: float) -> None:
        sizes = [
            f.vocab_size if d in f.domains else None for d in spec.domains for f in spec.fields
        ]
        flat, total = self.layout(sizes)
        super().__init__(flat.view(len(spec.domains), len(spec.fields)), total, dim, init_std)


class GlobalSharedEmbedding(SegmentedEmbedding):
    """GSE: one table per transferable field, shared by every domain (or every field: shared=all)."""

    def __init__(
        self, spec: FeatureSpec, dim: int, init_std: float, only_transferable: bool = True
    ) -> None:
        sizes = [
            f.vocab_size if (f.transferable or not only_transferable) else None for f in spec.fields
        ]
        offsets, total = self.layout(sizes)
        super().__init__(offsets, total, dim, init_std)


def per_segment(
    xs: tuple[torch.Tensor, ...],
    domain: torch.Tensor,
    counts: list[int] | None,
    fn: Callable[..., torch.Tensor],
) -> torch.Tensor:
    """``fn(d, *rows of domain d)`` over each domain's rows of ``xs``, concatenated.

    ``counts``: the rows are already in domain order, this many per domain (``by_domain``);
    None: they are put in domain order here and the result is put back. Each domain's rows
    are then one contiguous slice, so a per-domain weight costs one matmul per domain: on a
    CPU 3x faster than gathering a [k, k] matrix per row and running B tiny matmuls (bench/,
    "train"). ``torch.split``, not slicing: its backward is one concatenation, where each
    slice's backward fills a zero tensor of the whole batch.
    """
    order = None
    if counts is None:
        order, counts = domain_order(domain, 1)
        if order is not None:
            xs = tuple(x[order] for x in xs)
    parts = [torch.split(x, counts) for x in xs]
    out = torch.cat(
        [fn(d, *rows) for d, rows in enumerate(zip(*parts)) if rows[0].shape[0] or d == 0]
    )
    return undo_order(out, order)


class TransferMatrix(nn.Module):
    """m = T g with T per domain (or per domain and field), initialised to the identity."""

    def __init__(self, n_domains: int, n_fields: int, dim: int, mode: str) -> None:
        super().__init__()
        self.per_field = mode == "domain_field"
        shape = (n_domains, n_fields, dim, dim) if self.per_field else (n_domains, dim, dim)
        eye = torch.eye(dim).expand(shape).clone()
        if mode == "identity":
            self.register_buffer("T", eye)  # fixed: ablation "without transfer"
        else:
            self.T = nn.Parameter(eye)

    def forward(
        self, g: torch.Tensor, domain: torch.Tensor, counts: list[int] | None = None
    ) -> torch.Tensor:
        """g [B, F, k] -> T_d g [B, F, k]; ``counts`` as in ``per_segment``."""
        if self.per_field:  # [n, F, j] x [F, i, j]
            return per_segment(
                (g,), domain, counts, lambda d, x: torch.einsum("nfj,fij->nfi", x, self.T[d])
            )
        return per_segment((g,), domain, counts, lambda d, x: x @ self.T[d].T)


class CombinationAttention(nn.Module):
    """A = sigmoid(V1_d [e; m] + b1_d), per dimension (k) or a scalar per field.

    ``per_field``: V1 and b1 per (domain, field) instead of per domain. V1 = 0 and
    b1 = logit(init) at the start, so A = init everywhere (0.5: an even mix). V1's two halves
    multiply e and m apiece (no [e; m] copy).
    """

    def __init__(
        self,
        n_domains: int,
        dim: int,
        mode: str,
        init: float = 0.5,
        n_fields: int = 0,
        per_field: bool = False,
    ) -> None:
        super().__init__()
        self.fixed = mode == "none"
        self.init = init
        self.per_field = per_field
        self.dim = dim
        out = 1 if mode == "scalar" else dim
        lead = (n_domains, n_fields) if per_field else (n_domains,)
        bias = torch.full((*lead, out), math.log(init / (1 - init)))
        self.V1 = nn.Parameter(torch.zeros(*lead, out, 2 * dim), requires_grad=not self.fixed)
        self.b1 = nn.Parameter(bias, requires_grad=not self.fixed)

    def forward(
        self,
        e: torch.Tensor,
        m: torch.Tensor,
        domain: torch.Tensor,
        counts: list[int] | None = None,
    ) -> torch.Tensor:
        """A [B, F, o] from e, m [B, F, k]; ``counts`` as in ``per_segment``."""
        if self.fixed:
            return torch.full_like(e[..., :1], self.init)
        k = self.dim

        def gate(d: int, e_d: torch.Tensor, m_d: torch.Tensor) -> torch.Tensor:
            v = self.V1[d]
            if self.per_field:  # [n, F, k] x [F, o, k] + [F, o]
                return (
                    torch.einsum("nfj,foj->nfo", e_d, v[..., :k])
                    + torch.einsum("nfj,foj->nfo", m_d, v[..., k:])
                    + self.b1[d]
                )
            return e_d @ v[:, :k].T + m_d @ v[:, k:].T + self.b1[d]

        return torch.sigmoid(per_segment((e, m), domain, counts, gate))


def only_transferable(spec: FeatureSpec, names: list[str] | None) -> FeatureSpec:
    """The spec with only ``names`` (a subset of its transferable fields) left transferable."""
    if names is None:
        return spec
    known = {f.name for f in spec.fields if f.transferable}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(
            f"model.cdtm.transferable: {unknown} are not transferable fields of the spec "
            f"(those are {sorted(known)})"
        )
    fields = tuple(dataclasses.replace(f, transferable=f.name in names) for f in spec.fields)
    return dataclasses.replace(spec, fields=fields)


class CDTM(CTRModel):
    shared_fields: torch.Tensor

    def __init__(self, spec: FeatureSpec, conf: ModelConf) -> None:
        super().__init__()
        k, c = conf.embed_dim, conf.cdtm
        spec = only_transferable(spec, c.transferable)
        self.align_weight = c.align_weight if c.gse else 0.0
        self.align_moves = c.align_moves
        self.dse = DomainSpecificEmbedding(spec, k, conf.embed_init_std)
        self.use_gse = c.gse and any(f.transferable for f in spec.fields)
        # GSE, T and the gate work on the transferable fields only (C of F): the others use
        # their DSE alone, so nothing is computed for them.
        shared_fields = [i for i, f in enumerate(spec.fields) if f.transferable]
        self.register_buffer("shared_fields", torch.tensor(shared_fields), persistent=False)
        if self.use_gse:
            self.gse = GlobalSharedEmbedding(spec, k, conf.embed_init_std)
            self.transfer = TransferMatrix(len(spec.domains), len(shared_fields), k, c.transfer)
            self.attention = CombinationAttention(
                len(spec.domains),
                k,
                c.attention,
                c.attention_init,
                n_fields=len(shared_fields),
                per_field=c.gate == "domain_field",
            )
        self.transfer_reg = c.transfer_reg
        in_dim = len(spec.fields) * k + len(spec.dense)
        self.star_bottom = c.bottom == "star"
        self.bottom: nn.Module
        if self.star_bottom:
            self.bottom = StarMLP(len(spec.domains), in_dim, conf.bottom, conf.dropout)
            h = self.bottom.out_dim
        else:
            self.bottom, h = mlp(in_dim, conf.bottom, conf.dropout)
        self.towers = DomainTowers(len(spec.domains), h, conf.tower, conf.dropout)
        self.interaction = conf.interaction == "fm"

    def no_decay_parameters(self) -> list[str]:
        """The gate and T: weight decay would pull T toward 0 (not I) and the gate's b1 more
        than its data gradient does (issue #27's measurements); T has transfer_reg instead."""
        if not self.use_gse:
            return []
        names = [f"attention.{n}" for n, p in self.attention.named_parameters() if p.requires_grad]
        if isinstance(self.transfer.T, nn.Parameter):
            names.append("transfer.T")
        return names

    # Evaluation switch for the transfer report: z = e (DSE alone), as if GSE were off.
    without_gse: bool = False

    def combine(
        self, batch: Batch, counts: list[int] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """z [B, F, k] and the pieces that made it (for the loss and the transfer report):
        ``e`` [B, F, k] (DSE), and over the transferable fields (``fields``, C of them) ``e_t``,
        ``g``, ``m`` [B, C, k], ``a`` [B, C, o] and ``shared`` [B, C, 1] (the field is present).

        ``counts``: the batch's rows are in domain order, this many per domain."""
        e = self.dse(batch.fields, batch.domain)
        if not self.use_gse or self.without_gse:
            return e, {"e": e}
        cols = self.shared_fields
        every = cols.numel() == e.shape[1]
        e_t = e if every else e.index_select(1, cols)
        g = self.gse(batch.fields, columns=None if every else cols)
        m = self.transfer(g, batch.domain, counts)
        a = self.attention(e_t, m, batch.domain, counts)
        present = batch.fields if every else batch.fields.index_select(1, cols)
        shared = (present > 0).unsqueeze(-1)  # [B, C, 1]
        z_t = torch.where(shared, m + a * (e_t - m), e_t)  # = a e + (1 - a) m
        z = z_t if every else e.index_copy(1, cols, z_t)
        parts = {"e": e, "e_t": e_t, "g": g, "m": m, "a": a, "shared": shared, "fields": cols}
        return z, parts

    def forward_train(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # Rows in domain order for the per-domain parts, the logits back in the batch's order.
        batch, order, counts = by_domain(batch, self.towers.n_domains)
        z, parts = self.combine(batch, counts)
        x = torch.cat([z.flatten(1), batch.dense], dim=1)
        h = self.bottom(x, batch.domain) if self.star_bottom else self.bottom(x)
        logits = undo_order(self.with_interaction(self.towers(h, batch.domain, counts), z), order)
        aux: dict[str, torch.Tensor] = {}
        if "m" in parts and self.transfer_reg > 0 and isinstance(self.transfer.T, nn.Parameter):
            eye = torch.eye(self.transfer.T.shape[-1], device=self.transfer.T.device)
            aux["transfer_reg"] = self.transfer_reg * ((self.transfer.T - eye) ** 2).sum()
        if "m" in parts and self.align_weight > 0:
            shared = parts["shared"].squeeze(-1)
            e, m = parts["e_t"], parts["m"]
            if self.align_moves == "transfer":
                e = e.detach()
            elif self.align_moves == "transfer_matrix":
                e = e.detach()
                m = self.transfer(parts["g"].detach(), batch.domain, counts)
            elif self.align_moves == "dse":
                m = m.detach()
            dist = ((e - m) ** 2).sum(-1)  # [B, F]
            n = shared.sum().clamp_min(1)
            aux["align"] = self.align_weight * (dist * shared).sum() / n
        return logits, aux
