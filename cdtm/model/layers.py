"""Building blocks shared by CDTM and the baselines. Torch only.

Shapes: B rows, F fields (the feature spec's order), D domains, k embedding size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cdtm.data.batch import Batch


def domain_order(domain: torch.Tensor, n_domains: int) -> tuple[torch.Tensor | None, list[int]]:
    """The permutation that puts rows in domain order (None where they are already), and the
    rows of each domain (at least ``n_domains`` counts)."""
    order = None
    if domain.numel() > 1 and bool((domain[1:] < domain[:-1]).any()):
        order = torch.argsort(domain, stable=True)
    return order, torch.bincount(domain, minlength=n_domains).tolist()


def by_domain(batch: Batch, n_domains: int) -> tuple[Batch, torch.Tensor | None, list[int]]:
    """The batch with its rows in domain order (``order``: the permutation, None where they
    were already), and the rows of each domain. Every domain's rows are then one contiguous
    slice, so a per-domain weight is applied with one matmul per domain, no gather."""
    order, counts = domain_order(batch.domain, n_domains)
    return (batch if order is None else batch.select(order)), order, counts


def undo_order(x: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """Rows of ``x`` (in ``by_domain``'s order) back in the batch's own order."""
    if order is None:
        return x
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return x[inverse]


class SegmentedEmbedding(nn.Module):
    """Several embedding tables in one: ``segments[(s)]`` rows each, looked up by field index.

    Row 0 is a shared, frozen zero row: index 0 (absent) of any segment and any (row, field)
    without a segment map to it, so absent fields contribute nothing.
    ``offsets`` has the shape of the lookup key ([F] or [D, F]) and -1 where there is no segment.
    """

    offsets: torch.Tensor

    def __init__(self, offsets: torch.Tensor, total_rows: int, dim: int, init_std: float) -> None:
        super().__init__()
        self.register_buffer("offsets", offsets.long(), persistent=False)
        self.table = nn.Embedding(total_rows, dim, padding_idx=0)
        nn.init.normal_(self.table.weight, 0.0, init_std)
        with torch.no_grad():
            self.table.weight[0].zero_()

    @staticmethod
    def layout(sizes: Sequence[int | None]) -> tuple[torch.Tensor, int]:
        """Offsets for segments of the given sizes (None: no segment) and the total row count."""
        offsets, total = [], 1
        for size in sizes:
            if size is None:
                offsets.append(-1)
            else:
                offsets.append(total - 1)  # index i of the segment -> row offset + i (i >= 1)
                total += size - 1
        return torch.tensor(offsets, dtype=torch.long), total

    def forward(
        self,
        fields: torch.Tensor,
        key: torch.Tensor | None = None,
        columns: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """fields [B, F] -> [B, F, k]; ``key`` [B] selects the offset row of a [D, F] layout;
        ``columns``: look up only these fields -> [B, len(columns), k]."""
        off = self.offsets if key is None else self.offsets[key]
        if columns is not None:
            fields, off = fields.index_select(1, columns), off[..., columns]
        rows = torch.where((fields > 0) & (off >= 0), off + fields, torch.zeros_like(fields))
        return self.table(rows)


def pairwise_interaction(z: torch.Tensor) -> torch.Tensor:
    """FM's second-order term: sum over field pairs i < j of <z_i, z_j>, [B, F, k] -> [B]."""
    total = z.sum(1)
    return 0.5 * ((total * total).sum(-1) - (z * z).sum((1, 2)))


def mlp(in_dim: int, hidden: Sequence[int], dropout: float) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_dim = h
    return nn.Sequential(*layers), in_dim


class DomainTowers(nn.Module):
    """One MLP + logit head per domain; each row goes through its own domain's tower."""

    def __init__(self, n_domains: int, in_dim: int, hidden: Sequence[int], dropout: float) -> None:
        super().__init__()
        towers = []
        for _ in range(n_domains):
            body, out = mlp(in_dim, hidden, dropout)
            towers.append(nn.Sequential(body, nn.Linear(out, 1)))
        self.towers = nn.ModuleList(towers)
        self.n_domains = n_domains

    def forward(
        self, h: torch.Tensor, domain: torch.Tensor, counts: list[int] | None = None
    ) -> torch.Tensor:
        """h [B, H], domain [B] -> logits [B]. ``counts``: the rows are in domain order, this
        many per domain: each tower takes its slice (no gather, no scatter)."""
        if counts is not None:
            parts = torch.split(h, counts)
            outs = [t(p).squeeze(-1) for t, p in zip(self.towers, parts) if p.shape[0]]
            return torch.cat(outs) if outs else h.new_zeros(0)
        out = h.new_zeros(h.shape[0])
        for d, tower in enumerate(self.towers):
            idx = (domain == d).nonzero(as_tuple=True)[0]
            if idx.numel():
                out = out.index_put((idx,), tower(h[idx]).squeeze(-1))
        return out


class StarLinear(nn.Module):
    """y = x (W_shared * W_d) + (b_shared + b_d)."""

    def __init__(self, n_domains: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.shared_w = nn.Parameter(torch.empty(in_dim, out_dim))
        nn.init.xavier_uniform_(self.shared_w)
        self.domain_w = nn.Parameter(torch.ones(n_domains, in_dim, out_dim))
        self.shared_b = nn.Parameter(torch.zeros(out_dim))
        self.domain_b = nn.Parameter(torch.zeros(n_domains, out_dim))

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(x.shape[0], self.shared_w.shape[1])
        for d in range(self.domain_w.shape[0]):
            idx = (domain == d).nonzero(as_tuple=True)[0]
            if idx.numel():
                w = self.shared_w * self.domain_w[d]
                out = out.index_put((idx,), x[idx] @ w + self.shared_b + self.domain_b[d])
        return out


class StarMLP(nn.Module):
    """STAR's partial sharing as a bottom: StarLinear + ReLU layers, ``hidden`` wide."""

    def __init__(self, n_domains: int, in_dim: int, hidden: Sequence[int], dropout: float) -> None:
        super().__init__()
        dims = [in_dim, *hidden]
        self.layers = nn.ModuleList(
            [StarLinear(n_domains, a, b) for a, b in zip(dims[:-1], dims[1:])]
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_dim = dims[-1]

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = self.dropout(torch.relu(layer(x, domain)))
        return x


class PartitionedNorm(nn.Module):
    """STAR's partitioned normalisation: batch normalisation whose scale and shift are a shared
    part times (plus) the row's domain's part: y = (g * g_d) (x - mu) / sigma + (b + b_d)."""

    def __init__(self, n_domains: int, dim: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False)
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.domain_gamma = nn.Parameter(torch.ones(n_domains, dim))
        self.domain_beta = nn.Parameter(torch.zeros(n_domains, dim))

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] < 2:  # an empty or one-row batch has no statistics
            return x * self.gamma * self.domain_gamma[domain] + self.beta + self.domain_beta[domain]
        h = self.norm(x)
        return h * (self.gamma * self.domain_gamma[domain]) + self.beta + self.domain_beta[domain]
