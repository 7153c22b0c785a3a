"""Model modules: shapes, gradients, the alignment loss and the ablation switches. Torch only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cdtm.config import ModelConf, build
from cdtm.data.batch import Batch
from cdtm.model import MODELS, build_model
from cdtm.model.cdtm import (
    CDTM,
    CombinationAttention,
    DomainSpecificEmbedding,
    GlobalSharedEmbedding,
    TransferMatrix,
)
from cdtm.model.layers import PartitionedNorm
from cdtm.spec import DenseSpec, FeatureSpec, FieldSpec

# Three domains; "ctx" only in domain b (not transferable), "grp" in a and c (transferable).
SPEC = FeatureSpec(
    dataset="toy",
    domains=("a", "b", "c"),
    fields=(
        FieldSpec("user", "f_user", ("a", "b", "c"), True, 50),
        FieldSpec("item", "f_item", ("a", "b", "c"), True, 40),
        FieldSpec("ctx", "f_ctx", ("b",), False, 6),
        FieldSpec("grp", "f_grp", ("a", "c"), True, 5),
    ),
    dense=(DenseSpec("hour", "dense_hour", ("a", "b", "c"), 0.0, 23.0),),
)
K = 8


def conf(**kw: object) -> ModelConf:
    base = {"embed_dim": K, "bottom": [16], "tower": [8], "embed_init_std": 0.1}
    return build(ModelConf, {**base, **kw}, prefix="model")


def toy_batch(n: int = 64, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    domain = torch.randint(0, 3, (n,), generator=g)
    user = torch.randint(1, 50, (n,), generator=g)
    item = torch.randint(1, 40, (n,), generator=g)
    ctx = torch.where(domain == 1, torch.randint(1, 6, (n,), generator=g), 0)
    grp = torch.where(domain != 1, torch.randint(1, 5, (n,), generator=g), 0)
    fields = torch.stack([user, item, ctx, grp], dim=1)
    label = ((user + item) % 2).float()
    return Batch(domain, label, fields, torch.rand(n, 1, generator=g), torch.arange(n))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_gives_one_logit_per_row_and_gradients(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(SPEC, conf(name=name))
    batch = toy_batch()
    logits, aux = model.forward_train(batch)
    assert logits.shape == (64,) and torch.isfinite(logits).all()
    loss = F.binary_cross_entropy_with_logits(logits, batch.label) + sum(aux.values())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_dse_has_a_table_per_domain_field_and_absent_fields_are_zero() -> None:
    dse = DomainSpecificEmbedding(SPEC, K, 0.1)
    # rows: 1 pad + 3 domains x (user 49 + item 39) + ctx 5 (b only) + grp 4 (a, c)
    assert dse.table.num_embeddings == 1 + 3 * (49 + 39) + 5 + 2 * 4
    fields = torch.tensor([[3, 4, 2, 1], [3, 4, 2, 1], [3, 0, 0, 0]])
    out = dse(fields, torch.tensor([0, 1, 2]))
    assert out.shape == (3, 4, K)
    assert torch.equal(out[0, 2], torch.zeros(K))  # domain a has no ctx field
    assert torch.equal(out[1, 3], torch.zeros(K))  # domain b has no grp field
    assert torch.equal(out[2, 1:], torch.zeros(3, K))  # index 0 = absent
    assert not torch.equal(out[0, 0], out[1, 0])  # same user, own table per domain


def test_gse_is_shared_across_domains_for_transferable_fields_only() -> None:
    gse = GlobalSharedEmbedding(SPEC, K, 0.1)
    fields = torch.tensor([[3, 4, 2, 1]])
    out = gse(fields)
    assert torch.equal(out[0, 2], torch.zeros(K))  # ctx is not transferable: no GSE
    assert out[0, 0].abs().sum() > 0 and out[0, 3].abs().sum() > 0


def test_transfer_starts_as_identity_and_attention_at_half() -> None:
    t = TransferMatrix(3, 4, K, "domain")
    g = torch.randn(5, 4, K)
    assert torch.allclose(t(g, torch.tensor([0, 1, 2, 0, 1])), g)
    per_field = TransferMatrix(3, 4, K, "domain_field")
    assert per_field.T.shape == (3, 4, K, K)
    att = CombinationAttention(3, K, "vector")
    a = att(torch.randn(5, 4, K), torch.randn(5, 4, K), torch.tensor([0, 1, 2, 0, 1]))
    assert a.shape == (5, 4, K) and torch.allclose(a, torch.full_like(a, 0.5))
    assert CombinationAttention(3, K, "scalar")(
        torch.randn(5, 4, K), torch.randn(5, 4, K), torch.zeros(5, dtype=torch.long)
    ).shape == (5, 4, 1)


def test_alignment_loss_pulls_dse_and_mapped_gse_together() -> None:
    torch.manual_seed(0)
    model = CDTM(SPEC, conf(cdtm={"align_weight": 1.0}))
    batch = toy_batch(256)

    def distance() -> float:
        with torch.no_grad():
            _, parts = model.combine(batch)
            shared = parts["shared"].squeeze(-1)
            dist = ((parts["e_t"] - parts["m"]) ** 2).sum(-1)
            return float((dist * shared).sum() / shared.sum())

    before = distance()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(50):
        _, aux = model.forward_train(batch)
        opt.zero_grad()
        aux["align"].backward()
        opt.step()
    assert distance() < 0.1 * before


@pytest.mark.parametrize(
    "moves, moved",
    [
        ("dse", {"dse.table.weight"}),
        ("transfer", {"gse.table.weight", "transfer.T"}),
        ("both", {"dse.table.weight", "gse.table.weight", "transfer.T"}),
        ("transfer_matrix", {"transfer.T"}),
    ],
)
def test_align_moves_says_which_side_the_alignment_loss_moves(moves: str, moved: set) -> None:
    torch.manual_seed(0)
    model = CDTM(SPEC, conf(cdtm={"align_weight": 1.0, "align_moves": moves}))
    _, aux = model.forward_train(toy_batch())
    aux["align"].backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert got == moved


def test_alignment_that_moves_both_sides_shrinks_the_transfer() -> None:
    """With both sides free, alignment is also lowered by shrinking T g and DSE together (with
    FM on synthetic data T's diagonal fell from 1 to .46 in one epoch and learning stalled);
    with ``dse`` the loss leaves T alone."""
    norms = {}
    for moves in ("both", "dse"):
        torch.manual_seed(0)
        model = CDTM(SPEC, conf(cdtm={"align_weight": 1.0, "align_moves": moves}))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(200):
            _, aux = model.forward_train(toy_batch(256))
            opt.zero_grad()
            aux["align"].backward()
            opt.step()
        norms[moves] = float(model.transfer.T.detach().norm(dim=(-2, -1)).mean())
    start = float(torch.eye(K).norm())
    assert norms["dse"] == pytest.approx(start)
    assert norms["both"] < 0.95 * start  # and falling: T g and DSE shrink together


def test_ablation_switches_change_exactly_what_they_say() -> None:
    full = CDTM(SPEC, conf())
    names = {n for n, p in full.named_parameters() if p.requires_grad}
    assert {
        "transfer.T",
        "attention.V1",
        "attention.b1",
        "gse.table.weight",
        "dse.table.weight",
    } <= names

    no_att = CDTM(SPEC, conf(cdtm={"attention": "none", "attention_init": 0.5}))
    assert {n for n, p in no_att.named_parameters() if p.requires_grad} == names - {
        "attention.V1",
        "attention.b1",
    }
    _, parts = no_att.combine(toy_batch())
    assert torch.all(parts["a"] == 0.5)

    no_t = CDTM(SPEC, conf(cdtm={"transfer": "identity"}))
    assert {n for n, p in no_t.named_parameters() if p.requires_grad} == names - {"transfer.T"}
    assert torch.equal(no_t.transfer.T, torch.eye(K).expand(3, K, K))

    no_gse = CDTM(SPEC, conf(cdtm={"gse": False}))
    assert {n for n, p in no_gse.named_parameters()} == {
        n for n in names if not n.startswith(("gse.", "transfer.", "attention."))
    }
    assert no_gse.forward_train(toy_batch())[1] == {}

    no_align = CDTM(SPEC, conf(cdtm={"align_weight": 0.0}))
    assert {n for n, p in no_align.named_parameters() if p.requires_grad} == names
    assert set(no_align.forward_train(toy_batch())[1]) == {"transfer_reg"}
    assert set(full.forward_train(toy_batch())[1]) == {"align", "transfer_reg"}
    assert set(no_t.forward_train(toy_batch())[1]) == {"align"}  # a fixed T has no regulariser


def test_combination_uses_dse_alone_for_domain_only_fields() -> None:
    torch.manual_seed(0)
    model = CDTM(SPEC, conf(cdtm={"attention_init": 0.5}))
    batch = toy_batch()
    z, parts = model.combine(batch)
    ctx = 2
    assert torch.equal(z[:, ctx], parts["e"][:, ctx])  # ctx is not transferable
    assert parts["fields"].tolist() == [0, 1, 3]  # GSE, T and the gate: user, item, grp only
    rows = batch.fields[:, 0] > 0
    expected = 0.5 * parts["e"][rows, 0] + 0.5 * parts["m"][rows, 0]  # A = 0.5 at init
    assert torch.allclose(z[rows, 0], expected)
    grp = batch.fields[:, 3] > 0  # grp is the third transferable field
    expected = 0.5 * parts["e"][grp, 3] + 0.5 * parts["m"][grp, 2]
    assert torch.allclose(z[grp, 3], expected)
    assert torch.equal(z[~grp, 3], parts["e"][~grp, 3])  # absent (domain b): its DSE, zero


def test_attention_init_sets_the_starting_weight_on_dse() -> None:
    model = CDTM(SPEC, conf(cdtm={"attention_init": 0.1}))
    _, parts = model.combine(toy_batch())
    assert torch.allclose(parts["a"], torch.full_like(parts["a"], 0.1))
    fixed = CDTM(SPEC, conf(cdtm={"attention": "none", "attention_init": 0.2}))
    _, parts = fixed.combine(toy_batch())
    assert torch.all(parts["a"] == 0.2)


def test_transferable_subset_limits_gse_to_those_fields() -> None:
    none = CDTM(SPEC, conf(cdtm={"transferable": []}))
    assert not none.use_gse  # DSE alone, like the "no GSE" ablation
    some = CDTM(SPEC, conf(cdtm={"transferable": ["user"]}))
    assert some.shared_fields.tolist() == [0]
    batch = toy_batch()
    z, parts = some.combine(batch)
    assert parts["m"].shape == (len(batch), 1, K)  # the user field alone goes through GSE
    assert torch.equal(z[:, 1:], parts["e"][:, 1:])  # item, ctx, grp use their DSE alone
    with pytest.raises(ValueError, match=r"\['ctx'\] are not transferable"):
        CDTM(SPEC, conf(cdtm={"transferable": ["user", "ctx"]}))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fm_interaction_adds_the_pairwise_inner_products_to_the_logit(name: str) -> None:
    torch.manual_seed(0)
    plain = build_model(SPEC, conf(name=name))
    torch.manual_seed(0)
    fm = build_model(SPEC, conf(name=name, interaction="fm"))
    fm.load_state_dict(plain.state_dict())  # same weights: only the interaction term differs
    batch = toy_batch()
    z = fm.combine(batch)[0] if isinstance(fm, CDTM) else None
    if z is None:
        emb = fm.emb  # type: ignore[attr-defined]
        z = emb(batch.fields, batch.domain) if name == "dnn_single" else emb(batch.fields)
    pairs = sum(
        (z[:, i] * z[:, j]).sum(-1) for i in range(z.shape[1]) for j in range(i + 1, z.shape[1])
    )
    assert float(pairs.detach().abs().max()) > 1e-3
    torch.testing.assert_close(fm(batch), plain(batch) + pairs)


def test_gate_per_domain_field_gives_each_field_its_own_weights() -> None:
    torch.manual_seed(0)
    model = CDTM(SPEC, conf(cdtm={"gate": "domain_field", "attention_init": 0.5}))
    assert model.attention.V1.shape == (3, 3, K, 2 * K)  # 3 transferable fields
    assert model.attention.b1.shape == (3, 3, K)
    with torch.no_grad():
        model.attention.b1[0, 1] = 3.0  # domain a, field item: lean on DSE
    batch = toy_batch(128)
    _, parts = model.combine(batch)
    a = parts["a"]
    in_a = batch.domain == 0
    assert torch.allclose(a[in_a, 1], torch.sigmoid(torch.tensor(3.0)))
    assert torch.allclose(a[in_a, 0], torch.tensor(0.5))  # the user field keeps its own
    assert torch.allclose(a[~in_a], torch.tensor(0.5))  # other domains keep theirs
    # Per-domain gate (the default): one b1 per domain, shared by its fields.
    assert CDTM(SPEC, conf()).attention.b1.shape == (3, K)


def test_gate_and_transfer_have_no_weight_decay_and_t_is_pulled_toward_identity() -> None:
    from cdtm.train.loop import parameter_groups

    model = CDTM(SPEC, conf(cdtm={"transfer_reg": 0.5}))
    assert set(model.no_decay_parameters()) == {"attention.V1", "attention.b1", "transfer.T"}
    groups = parameter_groups(model, 1e-3)
    exempt = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    decayed = {id(p) for g in groups if g["weight_decay"] == 1e-3 for p in g["params"]}
    named = dict(model.named_parameters())
    assert exempt == {id(named[n]) for n in model.no_decay_parameters()}
    assert id(named["dse.table.weight"]) in decayed and not exempt & decayed
    # The regulariser is 0 at T = I and its gradient points back to I.
    batch = toy_batch()
    assert float(model.forward_train(batch)[1]["transfer_reg"].detach()) == 0.0
    with torch.no_grad():
        model.transfer.T.mul_(0.5)
    model.forward_train(batch)[1]["transfer_reg"].backward()
    eye = torch.eye(K).expand(3, K, K)
    assert torch.allclose(model.transfer.T.grad, 0.5 * 2 * (model.transfer.T.detach() - eye))
    # Without GSE nothing is exempt.
    assert CDTM(SPEC, conf(cdtm={"gse": False})).no_decay_parameters() == []


def test_star_bottom_shares_weights_across_domains_with_a_domain_factor() -> None:
    torch.manual_seed(0)
    model = CDTM(SPEC, conf(cdtm={"bottom": "star"}))
    names = {n for n, _ in model.named_parameters()}
    assert {"bottom.layers.0.shared_w", "bottom.layers.0.domain_w"} <= names
    batch = toy_batch()
    logits, _ = model.forward_train(batch)
    logits.sum().backward()
    assert model.bottom.layers[0].domain_w.grad.abs().sum(dim=(1, 2)).gt(0).all()


def test_partitioned_norm_scales_by_shared_times_domain_parameters() -> None:
    torch.manual_seed(0)
    norm = PartitionedNorm(2, 3)
    with torch.no_grad():
        norm.domain_gamma[1] = 2.0
        norm.domain_beta[1] = 1.0
    x = torch.randn(64, 3) * 5 + 7
    domain = torch.arange(64) % 2
    y = norm(x, domain)
    base = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + norm.norm.eps)
    assert torch.allclose(y[domain == 0], base[domain == 0], atol=1e-5)
    assert torch.allclose(y[domain == 1], 2 * base[domain == 1] + 1, atol=1e-5)
    norm.eval()  # running statistics at inference
    assert torch.isfinite(norm(x[:1], domain[:1])).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_rows_keep_their_order_and_an_empty_batch_runs(name: str) -> None:
    """Models put rows in domain order inside (one matmul per domain) and back: each row's
    logit is the one it gets alone. A Horovod rank whose shard is done steps on empty
    batches, which must run too."""
    torch.manual_seed(0)
    model = build_model(SPEC, conf(name=name))
    model.eval()
    batch = toy_batch(32)
    assert bool((batch.domain[1:] < batch.domain[:-1]).any())  # not in domain order
    alone = torch.cat([model(batch.select(torch.tensor([i]))) for i in range(len(batch))])
    assert torch.allclose(model(batch), alone, atol=1e-5)
    empty = batch.select(torch.zeros(len(batch), dtype=torch.bool))
    model.train()
    assert model.forward_train(empty)[0].shape == (0,)
