"""The wired network: per-example architectures, NSA-id weights, explicit wirings, parameter
counts, BN / MC-dropout evaluation switches, the fast stage against the reference one."""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nsa_core import fast_stage, runtime
from nsa_core import space as sp
from nsa_core.evaluate import bn_mode, frozen, mc_dropout
from nsa_core.network import CondBN, NetConfig, WiredNet, count_params

NODES = 4
B = 7
ARCH = [0, 3, 1, 4, 2, 3, 0]  # mixed, with repeats, not sorted


def _randomise(model: nn.Module, gen: torch.Generator) -> None:
    """Move every BN statistic and affine parameter, the per-arch weights included, away
    from their initial values so that no two architectures share them by accident."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.3)
            if isinstance(m, CondBN) and m.archs:
                m.cond_weight.copy_(torch.rand(m.cond_weight.shape, generator=gen) + 0.5)
                m.cond_bias.copy_(torch.randn(m.cond_bias.shape, generator=gen) * 0.3)
        if getattr(model, "agg", None) is not None:
            model.agg.copy_(torch.randn(model.agg.shape, generator=gen) * 2)


@pytest.fixture(params=[True, False], ids=["fast", "reference"])
def fast(request) -> bool:
    """Both stage paths: a test taking it runs on a network built with fast=True and on one
    built with fast=False."""
    return request.param


def _net(S=5, nodes=NODES, width=0.5, seed=0, double=True, randomise=True, fast=False, **cfg):
    space = sp.training_space(S, nodes=nodes, seed=seed)
    model = WiredNet(space, NetConfig(width=width, nodes=nodes, **cfg), fast=fast)
    if double:
        model = model.double()
    if randomise:
        _randomise(model, torch.Generator().manual_seed(seed + 100))
    return model.eval(), space


def _x(n=B, dtype=torch.float64, seed=1):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _close(a, b, tol=1e-9):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}


def _assert_state_equal(model, saved):
    now = model.state_dict(keep_vars=True)
    assert now.keys() == saved.keys()
    for k, v in saved.items():
        assert torch.equal(now[k].detach(), v), k


def _flags(model):
    return {name: m.training for name, m in model.named_modules()}


# ------------------------------------------------------------------ per-example equivalence

@pytest.mark.parametrize("cfg", [
    dict(),                                            # NSA-i
    dict(cond_bn=True, cond_agg=True, aux=True),       # NSA-id
    dict(cond_agg=True),                               # NSA-id, aggregation only
], ids=["nsa-i", "nsa-id", "agg-only"])
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
def test_mixed_batch_equals_per_example(cfg, fast):
    model, _ = _net(fast=fast, **cfg)
    x, arch = _x(), torch.tensor(ARCH)
    with torch.no_grad():
        out, aux = model(x, arch, with_aux=True)
        for b in range(B):
            ob, ab = model(x[b:b + 1], torch.tensor([ARCH[b]]), with_aux=True)
            _close(out[b:b + 1], ob)
            if cfg.get("aux"):
                _close(aux[b:b + 1], ab)
        # the architectures do matter: the same images through arch 0 give other logits
        assert (out - model(x, 0)).abs().amax() > 1e-3


def test_explicit_wirings_mixed_batch_equals_per_example(fast):
    model, space = _net(fast=fast)
    w = sp.unseen_architectures(B, space, seed=0)          # [B, 3, N+1, N+1]
    x = _x()
    with torch.no_grad():
        out = model(x, wirings=torch.from_numpy(w))
        for b in range(B):
            _close(out[b:b + 1], model(x[b:b + 1], wirings=w[b]))
        assert (out - model(x, wirings=w[0])).abs().amax() > 1e-3


def test_explicit_wirings_equal_space_entries(fast):
    model, space = _net(fast=fast)
    x = _x()
    with torch.no_grad():
        for k in range(len(space)):
            _close(model(x, wirings=space[k]), model(x, k))                 # shared wiring
        _close(model(x, wirings=space[ARCH]), model(x, torch.tensor(ARCH)))  # per example


def test_shared_index_batch_equals_per_example_path(fast):
    for cfg in (dict(), dict(cond_bn=True, cond_agg=True)):
        model, space = _net(fast=fast, **cfg)
        x, k = _x(), 3
        with torch.no_grad():
            shared = model(x, k)
            _close(shared, model(x, torch.full((B,), k)))
            for b in range(B):
                _close(shared[b:b + 1], model(x[b:b + 1], torch.tensor([k])))
            if not cfg:
                # the per-example coefficient path (a [B, ...] stack of one wiring) agrees
                _close(shared, model(x, wirings=np.stack([space[k]] * B)))


def test_forward_argument_errors():
    cond, space = _net(S=3, cond_agg=True, double=False, randomise=False)
    plain, _ = _net(S=3, double=False, randomise=False)
    x = _x(4, torch.float32)
    with pytest.raises(ValueError, match="unconditional"):
        cond(x, wirings=space[0])
    for model in (cond, plain):
        with pytest.raises(ValueError, match=r"arch: expected one index per example, shape \(4,\)"):
            model(x, torch.zeros(5, dtype=torch.long))
        with pytest.raises(ValueError, match="arch: expected"):
            model(x, torch.zeros(4, 1, dtype=torch.long))
        with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
            model(x, torch.tensor([0, 1, 3, 0]))
        with pytest.raises(ValueError, match="must lie in"):
            model(x, torch.tensor([0, -1, 2, 0]))
        with pytest.raises(ValueError, match="must lie in"):
            model(x, 7)
    with pytest.raises(ValueError, match="either arch"):
        plain(x, torch.zeros(4, dtype=torch.long), wirings=space[0])
    with pytest.raises(ValueError, match="batch of 4"):
        plain(x, wirings=space[[0, 1]])
    bad = space[0].copy()
    bad[1, 0, 2] = 1
    with pytest.raises(ValueError, match="lower-triangular"):
        plain(x, wirings=bad)
    with pytest.raises(ValueError, match="shape"):
        plain(x, wirings=sp.training_space(1, nodes=NODES + 1)[0])


def test_conditional_aggregation_is_per_architecture(fast):
    model, _ = _net(S=4, cond_agg=True, fast=fast)
    arch = torch.tensor([0, 1, 2, 3, 2, 1, 0, 2])
    x = _x(len(arch))
    with torch.no_grad():
        before = model(x, arch)
        model.agg[2].copy_(torch.randn(model.agg[2].shape, generator=torch.Generator().manual_seed(5)) * 3)
        after = model(x, arch)
    hit = arch == 2
    _close(after[~hit], before[~hit], tol=1e-12)
    assert ((after[hit] - before[hit]).abs().amax(1) > 1e-3).all()


# ------------------------------------------------------------------ sizes

def test_parameter_counts_match_paper():
    cfg = dict(width=10, nodes=8, aux=True, classes=10)
    with torch.device("meta"):
        wrn = WiredNet(sp.fixed_architecture(sp.residual_wiring(8)), NetConfig(**cfg))
        nsa_id = WiredNet(sp.training_space(5, 8, seed=0),
                          NetConfig(cond_agg=True, cond_bn=True, **cfg))
    assert round(count_params(wrn) / 1e6, 1) == 39.5
    assert round(count_params(nsa_id) / 1e6, 1) == 39.6
    # the extras are exactly 5 x 3 aggregation matrices and 4 more BN affine copies
    bn_channels = sum(m.num_features for m in wrn.modules() if isinstance(m, CondBN))
    assert count_params(nsa_id) - count_params(wrn) == 5 * 3 * 81 + 4 * 2 * bn_channels
    assert next(wrn.parameters()).is_meta


def test_meta_device_count_matches_real_build():
    space = sp.training_space(3, nodes=3, seed=0)
    cfg = NetConfig(width=1, nodes=3, aux=True, cond_bn=True, cond_agg=True)
    with torch.device("meta"):
        meta = WiredNet(space, cfg)
    real = WiredNet(space, cfg)
    assert count_params(meta) == count_params(real)
    assert [(n, p.shape) for n, p in meta.named_parameters()] == \
           [(n, p.shape) for n, p in real.named_parameters()]


# ------------------------------------------------------------------ BN evaluation modes

def _trained_model(**cfg):
    model, _ = _net(S=3, nodes=3, width=0.25, aux=True, **cfg)
    model.train()
    with torch.no_grad():  # make num_batches_tracked and the statistics non-trivial
        for s in range(2):
            model(_x(8, seed=10 + s), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), with_aux=True)
    return model


@pytest.mark.parametrize("mode", ["train", "test"])
@pytest.mark.parametrize("outer", ["train", "eval"])
def test_bn_mode_changes_nothing(mode, outer, fast):
    model = _trained_model(cond_bn=True, cond_agg=True, fast=fast)
    getattr(model, outer)()
    # submodules deliberately left in the other mode must come back as they were
    model.stem_bn.train(outer == "eval")
    model.stages[1].nodes[0].train(outer == "eval")
    flags, saved = _flags(model), _state(model)
    assert saved["stem_bn.num_batches_tracked"].item() == 2
    x, arch = _x(6), torch.tensor([0, 2, 1, 1, 0, 2])
    with bn_mode(model, mode) as m:
        assert m is model
        for name, mod in model.named_modules():
            is_bn = isinstance(mod, nn.BatchNorm2d)
            assert mod.training == (mode == "train" and is_bn), name
        out, aux = model(x, arch, with_aux=True)
        out.sum().backward()  # even a backward writes nothing to the state
    assert aux is not None
    _assert_state_equal(model, saved)
    assert _flags(model) == flags
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.parametrize("cond_bn", [False, True], ids=["shared-bn", "per-arch-bn"])
def test_bn_mode_outputs(fast, cond_bn):
    model = _trained_model(cond_bn=cond_bn, fast=fast)
    _randomise(model, torch.Generator().manual_seed(3))  # running stats far from any batch's
    x, arch = _x(6), torch.tensor([0, 2, 1, 1, 0, 2])
    with torch.no_grad():
        with bn_mode(model, "test"):
            test_out = model(x, arch)
        with bn_mode(model, "train"):
            train_out = model(x, arch)
        _close(test_out, model.eval()(x, arch))
        # batch statistics: what a copy in training mode computes (it also updates stats)
        _close(train_out, copy.deepcopy(model).train()(x, arch))
    assert (train_out - test_out).abs().amax() > 1e-2


@pytest.mark.parametrize("archs", [0, 3])
def test_bn_mode_single_layer_manual(archs, fast):
    bn = CondBN(5, archs, fast=fast).double()
    _randomise(bn, torch.Generator().manual_seed(4))
    bn.num_batches_tracked.fill_(3)
    saved = _state(bn)
    x = torch.randn(6, 5, 4, 4, dtype=torch.float64) * 2 + 1
    arch = torch.tensor([0, 1, 2, 2, 1, 0]) if archs else None
    if archs:
        w, b = bn.cond_weight[arch][:, :, None, None], bn.cond_bias[arch][:, :, None, None]
    else:
        w, b = bn.weight[None, :, None, None], bn.bias[None, :, None, None]
    with torch.no_grad():
        with bn_mode(bn, "train"):
            y_train = bn(x, arch)
        with bn_mode(bn, "test"):
            y_test = bn(x, arch)
        mean = x.mean((0, 2, 3), keepdim=True)
        var = x.var((0, 2, 3), unbiased=False, keepdim=True)
        _close((x - mean) / torch.sqrt(var + bn.eps) * w + b, y_train)
        rm, rv = bn.running_mean[None, :, None, None], bn.running_var[None, :, None, None]
        _close((x - rm) / torch.sqrt(rv + bn.eps) * w + b, y_test)
    _assert_state_equal(bn, saved)


def test_bn_mode_rejects_unknown_mode():
    model = _trained_model()
    flags = _flags(model)
    for bad in ("eval", "Train", None):
        with pytest.raises(ValueError, match="'train' or 'test'"):
            with bn_mode(model, bad):
                pass
    assert _flags(model) == flags


def test_bn_mode_train_keeps_dropout_off():
    model = _trained_model(dropout=0.2)
    x = _x(6)
    with torch.no_grad(), bn_mode(model, "train"):
        assert torch.equal(model(x, 1), model(x, 1))


# ------------------------------------------------------------------ MC dropout

def test_mc_dropout():
    model, _ = _net(S=1, nodes=NODES, width=0.25, dropout=0.2)  # one fixed architecture
    model.train()
    flags, saved = _flags(model), _state(model)
    x = _x(6)
    with torch.no_grad():
        with mc_dropout(model):
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    assert not m.training
                if isinstance(m, nn.Dropout):
                    assert m.training
            a, b = model(x), model(x)
        assert (a - b).abs().amax() > 1e-4
        assert _flags(model) == flags
        _assert_state_equal(model, saved)
        model.eval()
        e1, e2 = model(x), model(x)
    assert torch.equal(e1, e2)
    assert (a - e1).abs().amax() > 1e-4
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 3 * NODES


# ------------------------------------------------------------------ heads, gradients, dtype

@pytest.mark.parametrize("aux", [True, False])
def test_with_aux(aux):
    model, _ = _net(S=2, nodes=3, width=0.25, classes=7, aux=aux, double=False, randomise=False)
    model.train()
    x = _x(5, torch.float32)
    logits, aux_logits = model(x, torch.tensor([0, 1, 1, 0, 1]), with_aux=True)
    assert logits.shape == (5, 7)
    if aux:
        assert aux_logits.shape == (5, 7)
        assert torch.isfinite(aux_logits).all()
    else:
        assert aux_logits is None
    plain = model(x, 0)
    assert isinstance(plain, torch.Tensor) and plain.shape == (5, 7)


def test_gradients_reach_only_used_architectures(fast):
    model, space = _net(S=4, nodes=3, width=0.25, cond_agg=True, cond_bn=True, fast=fast)
    model.train()
    arch = torch.tensor([0, 2, 0, 2, 2, 0])
    y = torch.tensor([1, 3, 5, 7, 9, 0])
    F.cross_entropy(model(_x(6), arch), y).backward()
    used, unused = [0, 2], [1, 3]
    g = model.agg.grad
    assert g is not None
    assert torch.count_nonzero(g[unused]) == 0
    for k in used:
        mask = torch.from_numpy(space[k]).bool()
        assert torch.count_nonzero(g[k][~mask]) == 0  # absent edges get no gradient
        assert (g[k][mask] != 0).double().mean() > 0.9
    cond = [m for m in model.modules() if isinstance(m, CondBN)]
    assert len(cond) == 1 + 3 * 3 + 2
    for m in cond:
        for p in (m.cond_weight, m.cond_bias):
            assert p.grad is not None
            assert torch.count_nonzero(p.grad[unused]) == 0
            assert all(p.grad[k].abs().sum() > 0 for k in used)


def test_float64(fast):
    model32, space = _net(double=False, cond_bn=True, cond_agg=True, aux=True, fast=fast)
    model64 = copy.deepcopy(model32).double()
    assert all(p.dtype == torch.float64 for p in model64.parameters())
    x = _x(4, torch.float32)
    arch = torch.tensor([1, 4, 4, 0])
    with torch.no_grad():
        out32, aux32 = model32(x, arch, with_aux=True)
        out64, aux64 = model64(x.double(), arch, with_aux=True)
    assert out64.dtype == aux64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), out32, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(aux64.float(), aux32, rtol=1e-3, atol=1e-4)
    plain, space = _net(double=True, fast=fast)
    out = plain(x.double(), wirings=space[[0, 1, 2, 3]])
    assert out.dtype == torch.float64 and torch.isfinite(out).all()


# ------------------------------------------------------ the fast stage against the reference

def _pair(cfg):
    """A model for `cfg` (a config, or a fixed 'residual' / 'chain' wiring) built with the
    fast stage, its architecture indices (mixed for a space), and an identical copy switched
    to the readable definition (use_fast(False)): one to run each stage path."""
    if cfg in ("residual", "chain"):
        wiring = sp.residual_wiring(NODES) if cfg == "residual" else sp.chain_wiring(NODES)
        model = WiredNet(np.stack([wiring] * 3), NetConfig(width=0.5, nodes=NODES), fast=True).double()
        _randomise(model, torch.Generator().manual_seed(3))
        arch = torch.zeros(B, dtype=torch.long)
    else:
        model, _ = _net(S=5, fast=True, **cfg)
        arch = torch.tensor(ARCH)
    return model, copy.deepcopy(model).use_fast(False), arch


def _loss(model, x, arch):
    return F.cross_entropy(model(x, arch), torch.arange(len(x)) % 10)


def _stage_calls(monkeypatch):
    """Counts of fast_stage.stage_forward and fast_stage.cond_batch_norm calls, recorded from now on."""
    calls = {"stage": 0, "bn": 0}
    stage, bn = fast_stage.stage_forward, fast_stage.cond_batch_norm

    def counted_stage(*a):
        calls["stage"] += 1
        return stage(*a)

    def counted_bn(*a, **kw):
        calls["bn"] += 1
        return bn(*a, **kw)

    monkeypatch.setattr(fast_stage, "stage_forward", counted_stage)
    monkeypatch.setattr(fast_stage, "cond_batch_norm", counted_bn)
    return calls


PATHS = [dict(), dict(cond_bn=True, cond_agg=True), dict(cond_agg=True), "residual", "chain"]
PATH_IDS = ["nsa-i", "nsa-id", "nsa-id-agg", "residual", "chain"]


@pytest.mark.parametrize("cfg", PATHS, ids=PATH_IDS)
def test_fast_stage_equals_reference_in_training(cfg, monkeypatch):
    """Loss and every gradient (input, weights, BN affine, per-architecture coefficients and
    BN weights) and the BN running statistics of the fast stage equal those of
    `Stage.forward`'s reference definition, in float64, BN in training mode, a mixed batch
    (fixed wirings: unit rows that skip the gather, slots kept out of the buffer)."""
    fast, ref, arch = _pair(cfg)
    fast.train(), ref.train()
    calls = _stage_calls(monkeypatch)
    xs = [_x().requires_grad_() for _ in range(2)]
    losses = [_loss(fast, xs[0], arch)]
    assert calls["stage"] == 3          # the fast model did run the fast stages
    losses.append(_loss(ref, xs[1], arch))
    assert calls["stage"] == 3          # and the copy the readable ones
    for loss in losses:
        loss.backward()
    _close(losses[0], losses[1])
    _close(xs[0].grad, xs[1].grad)
    grads = 0
    for (name, p), q in zip(fast.named_parameters(), ref.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-9, msg=name)
            grads += 1
    assert grads == len(list(fast.parameters()))
    if fast.agg is not None:   # the coefficients do get a gradient (a zero one would pass too)
        assert fast.agg.grad.abs().amax() > 1e-4
    for (name, b), c in zip(fast.named_buffers(), ref.buffers()):   # BN ran once per node
        torch.testing.assert_close(b.double(), c.double(), rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize("track", [True, False], ids=["running-stats", "batch-stats-only"])
def test_cond_batch_norm_in_bf16_is_as_accurate_as_native_batch_norm(track):
    """In bf16 (the trainer's precision on CPUs with native bf16) the fast path's BN keeps its
    statistics, sums and per-channel factors in fp32, as native BN does. Given one shared
    affine, its outputs are native BN's but for a rare last-bit rounding (rounding x_hat to
    bf16 first, as it once did, changed a third of them), its running statistics are the
    same, and its output and gradients are as close to float64 BN's as native BN's are; also
    without running statistics, where native BN alone would keep bf16 statistics."""
    C = 16
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(32, C, 8, 8, generator=g) * 3 + torch.randn(1, C, 1, 1, generator=g) * 4)
    x = x.bfloat16().to(memory_format=torch.channels_last)
    bn = CondBN(C, 0, fast=True)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2, generator=g), bn.bias.normal_(generator=g)
    native = nn.BatchNorm2d(C)
    native.load_state_dict(bn.state_dict())
    truth = copy.deepcopy(native).double()
    for m in (bn, native, truth):   # without running statistics (bn_mode "train")
        m.track_running_stats = track
    gy = torch.randn(x.shape, generator=g)
    results = []
    for module, run in ((bn, lambda v: fast_stage.cond_batch_norm(bn, v, *bn.example_affine(None, len(v)))),
                        (native, native), (truth, truth)):
        v = (x.double() if module is truth else x.clone()).requires_grad_()
        y = run(v)
        (y.double() * gy.double()).sum().backward()
        results.append([t.detach().double() for t in (y, v.grad, module.weight.grad, module.bias.grad)])
    fast, nat, want = results
    assert (fast[0] != nat[0]).float().mean() < 1e-3
    _close(bn.running_mean, native.running_mean, 0), _close(bn.running_var, native.running_var, 0)
    for name, f, n, w in zip(["y", "x.grad", "weight.grad", "bias.grad"], fast, nat, want):
        assert (f - w).norm() <= 1.1 * (n - w).norm() + 1e-6 * w.norm(), name


def test_fast_stage_rebuilds_per_architecture_bn_outputs_bit_for_bit_in_bf16(monkeypatch):
    """The coefficients' gradient rebuilds every node's output from its BN input with the
    scale and shift the forward applied: under bf16 autocast each rebuilt output equals the
    forward's exactly (the same multiply-add on the same tensors)."""
    model, _, arch = _pair(dict(cond_bn=True, cond_agg=True))
    model.float().train()
    outputs: dict[int, list[torch.Tensor]] = {}
    affine = fast_stage._affine

    def recorded(x, scale, shift):
        y = affine(x, scale, shift)
        outputs.setdefault(x.data_ptr(), []).append(y.detach().clone())
        return y

    monkeypatch.setattr(fast_stage, "_affine", recorded)
    with torch.autocast("cpu", torch.bfloat16):
        loss = _loss(model, _x(dtype=torch.float32), arch)
    loss.backward()
    again = [ys for ys in outputs.values() if len(ys) == 2]   # forward, then the rebuild
    assert len(again) == 3 * NODES and all(ys[0].dtype == torch.bfloat16 for ys in again)
    assert all(torch.equal(*ys) for ys in again)


@pytest.mark.parametrize("cfg", PATHS, ids=PATH_IDS)
def test_fast_stage_equals_reference_autograd_grad(cfg):
    """torch.autograd.grad sees through a fast stage (its parameters are inputs of its
    function), leaves .grad alone, and with the parameters frozen in eval mode (an attack's
    input gradient) differentiates the input alone; both as the reference does."""
    fast, ref, arch = _pair(cfg)
    fast.eval(), ref.eval()
    x = _x().requires_grad_()
    names = [n for n, _ in fast.named_parameters()]
    got = torch.autograd.grad(_loss(fast, x, arch), list(fast.parameters()) + [x])
    want = torch.autograd.grad(_loss(ref, x, arch), list(ref.parameters()) + [x])
    assert all(p.grad is None for p in fast.parameters())
    for name, g, h in zip(names + ["x"], got, want):
        torch.testing.assert_close(g, h, rtol=1e-9, atol=1e-9, msg=name)
    with frozen(fast), frozen(ref):
        (gx,) = torch.autograd.grad(_loss(fast, x, arch), x)
        (hx,) = torch.autograd.grad(_loss(ref, x, arch), x)
    _close(gx, hx)
    assert all(p.requires_grad and p.grad is None for p in fast.parameters())


BN_SWITCHES = {
    # (the mode the forward runs in, the switch made before the backward)
    "train->eval": (lambda m: m.train(), lambda m: m.eval()),
    "eval->train": (lambda m: m.eval(), lambda m: m.train()),
    "bn_mode train->test": ("train", "test"),
    "bn_mode test->train": ("test", "train"),
}


@pytest.mark.parametrize("cfg", [dict(cond_agg=True), dict(cond_agg=True, cond_bn=True)], ids=["nsa-id-agg", "nsa-id"])
@pytest.mark.parametrize("switch", list(BN_SWITCHES), ids=list(BN_SWITCHES))
def test_fast_stage_backward_uses_the_forward_bn_mode(cfg, switch):
    """The fast stage rebuilds node outputs in its backward for the coefficients' gradient
    (agg.grad); it must rebuild them in the BN mode its forward ran in (recorded at forward),
    not the mode the model is in when backward runs. A fast model whose BN mode is switched
    between forward and backward gives the readable path's agg.grad computed without a switch
    (and so does every other gradient)."""
    fast, ref, arch = _pair(cfg)
    before, after = BN_SWITCHES[switch]
    x = _x()
    if callable(before):
        before(fast), before(ref)
        loss = _loss(fast, x, arch)
        after(fast)                          # switched between forward and backward
        loss.backward()
        _loss(ref, x, arch).backward()       # no switch
    else:
        with bn_mode(fast, before):
            loss = _loss(fast, x, arch)
        with bn_mode(fast, after):           # switched between forward and backward
            loss.backward()
        with bn_mode(ref, before):
            _loss(ref, x, arch).backward()
    assert fast.agg.grad.abs().amax() > 1e-4
    torch.testing.assert_close(fast.agg.grad, ref.agg.grad, rtol=1e-9, atol=1e-9)
    for (name, p), q in zip(fast.named_parameters(), ref.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-9, msg=name)


def test_fast_stage_backward_twice_is_an_error():
    model, _, arch = _pair(dict())
    loss = _loss(model.train(), _x().requires_grad_(), arch)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="first backward"):
        loss.backward()


def test_fast_choice(monkeypatch):
    """A network runs the fast stage (and, with per-architecture BN, the fast conditional BN)
    exactly when built with fast=True or switched by use_fast(True); use_fast switches in place
    and keeps the numbers. runtime.Settings (NSA_STAGE) picks the path: 'auto' is the fast
    one on the CPU and the readable one on CUDA; unknown names are refused."""
    calls = _stage_calls(monkeypatch)
    x = _x(2, torch.float32)

    def counts(model):
        calls.update(stage=0, bn=0)
        with torch.no_grad():
            out = model(x, 0)
        return (calls["stage"], calls["bn"]), out

    plain = WiredNet(sp.training_space(3, nodes=3, seed=0), NetConfig(width=0.25, nodes=3))
    assert counts(plain)[0] == (0, 0)                       # the default is the readable path
    cond = WiredNet(sp.training_space(3, nodes=3, seed=0), NetConfig(width=0.25, nodes=3, cond_bn=True),
                    fast=True).eval()
    (n_fast, fast_out) = counts(cond)
    assert n_fast == (3, 1 + 3 * 3 + 2)                     # 3 stages; every conditional BN
    assert cond.use_fast(False) is cond
    (n_ref, ref_out) = counts(cond)
    assert n_ref == (0, 0)
    torch.testing.assert_close(fast_out, ref_out, rtol=1e-4, atol=1e-5)
    assert counts(cond.use_fast(True))[0] == n_fast

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for stage, on_cpu, on_cuda in (("auto", True, False), ("fast", True, True), ("reference", False, False)):
        settings = runtime.Settings.from_env({"NSA_STAGE": stage})
        assert (settings.fast_stage(cpu), settings.fast_stage(cuda)) == (on_cpu, on_cuda), stage
    assert runtime.Settings.from_env({}).stage == "auto"
    with pytest.raises(ValueError, match="NSA_STAGE must be one of auto, fast, reference"):
        runtime.Settings.from_env({"NSA_STAGE": "slow"})
