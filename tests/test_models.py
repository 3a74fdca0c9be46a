"""The model registry (kinds.py): parameter counts of every kind at the paper's size, exact to
the parameter, computed here from the network's definition (stem, 3 stages of N ReLU-conv-BN
nodes, transitions, head, auxiliary head, aggregation coefficients), independently of the
code that builds the network; the wirings each kind is built on; the fast stage flag."""
from __future__ import annotations

import numpy as np
import pytest

from nsa_core import data as D
from nsa_core import space as sp
from nsa_core.kinds import KINDS, architectures, build
from nsa_core.network import CondBN, Stage, count_params
from nsa_core.profiles import get_profile

S5 = 5


def by_definition(kind: str, classes: int, aux: bool, width: float = 10.0, nodes: int = 8, space: int = 1) -> int:
    k = KINDS[kind]
    c = [round(16 * width), round(32 * width), round(64 * width)]
    archs = space if k.cond_bn else 1
    bn = lambda ch: 2 * ch * archs                                   # noqa: E731  (affine per architecture)
    total = 3 * c[0] * 9 + bn(c[0])                                  # stem: 3x3 conv + BN
    total += sum(nodes * (ch * ch * 9 + bn(ch)) for ch in c)         # nodes: 3x3 conv + BN
    total += sum(c[i] * c[i + 1] + bn(c[i + 1]) for i in range(2))   # transitions: 1x1 conv + BN
    total += c[2] * classes + classes                                # head
    if aux:                                                          # 1x1 conv 128 + BN, 2x2 conv 768 + BN, linear
        total += c[2] * 128 + 2 * 128 + 128 * 768 * 4 + 2 * 768 + 768 * classes + classes
    if k.cond_agg:
        total += (space if not k.fixed else 1) * 3 * (nodes + 1) ** 2  # one (N+1)x(N+1) matrix per stage
    return total


CASES = [("wrn", 1), ("wrn-dropout", 1), ("single", S5), ("nsa", 500), ("nsa-i", 500), ("nsa-id-agg", 500),
         ("nsa-id", S5)]


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
@pytest.mark.parametrize("kind, space", CASES)
@pytest.mark.parametrize("aux", [True, False])
def test_parameter_counts_at_the_papers_size(kind, space, dataset, aux):
    spec = get_profile("paper").spec(kind, space=space, dataset=dataset, aux_weight=0.1 if aux else 0.0)
    classes = D.NUM_CLASSES[dataset]
    assert count_params(build(spec, classes)) == by_definition(kind, classes, aux, space=space)


def test_the_papers_rounded_counts():
    """Table 2: WRN-28-10† 39.5M and NSA-id 39.6M (CIFAR-10, auxiliary head included)."""
    p = get_profile("paper")
    wrn = count_params(build(p.spec("wrn"), 10))
    nsa_id = count_params(build(p.spec("nsa-id", space=S5), 10))
    assert round(wrn / 1e5) == 395 and round(nsa_id / 1e5) == 396, (wrn, nsa_id)


def test_fixed_wirings_learn_their_aggregation():
    """The authors run every fixed-wiring model with learnable aggregation (S = 1)."""
    for kind in ("wrn", "wrn-dropout", "single"):
        model = build(get_profile("smoke").spec(kind, space=3 if kind == "single" else 1), 10)
        assert model.agg is not None and model.agg.shape[0] == 1


def test_every_kind_is_registered_with_a_known_wiring_and_sampling():
    assert set(KINDS) == {"nsa", "nsa-i", "nsa-id", "nsa-id-agg", "wrn", "wrn-dropout", "single", "residual"}
    for name, k in KINDS.items():
        assert k.wiring in ("space", "residual", "one"), name
        assert k.sampling in ("batch", "example", "fixed"), name
        assert k.fixed == (k.sampling == "fixed") == (k.wiring != "space"), name
        assert k.label, name
    assert KINDS["nsa"].sampling == "batch" and KINDS["nsa-i"].sampling == KINDS["nsa-id"].sampling == "example"
    assert not KINDS["residual"].cond_agg and KINDS["wrn"].cond_agg


def test_architectures_follow_the_kinds_wiring():
    """'space': the S architectures of the training space (its seed); 'residual': the residual
    wiring in every stage; 'one': architecture arch_index of the space, alone."""
    p = get_profile("smoke")
    nodes = p.understand.nodes
    space = sp.training_space(7, nodes, seed=2)
    for kind in ("nsa", "nsa-i", "nsa-id"):
        np.testing.assert_array_equal(architectures(p.spec(kind, space=7, space_seed=2)), space)
    residual = sp.fixed_architecture(sp.residual_wiring(nodes))[None]
    for kind in ("wrn", "wrn-dropout", "residual"):
        np.testing.assert_array_equal(architectures(p.spec(kind)), residual)
    one = architectures(p.spec("single", space=7, space_seed=2, arch_index=4))
    np.testing.assert_array_equal(one, space[4:5])
    model = build(p.spec("single", space=7, space_seed=2, arch_index=4), 10)
    assert model.num_archs == 1 and np.array_equal(model.space.numpy().astype(np.uint8), space[4:5])


def test_build_runs_the_chosen_stage_path(monkeypatch):
    """build(spec, classes, fast=...) fixes which path every stage and per-architecture BN runs."""
    spec = get_profile("smoke").spec("nsa-id", space=3, width=0.25)
    for fast in (False, True):
        model = build(spec, 10, fast=fast)
        paths = {m.fast for m in model.modules() if isinstance(m, (Stage, CondBN))}
        assert paths == {fast}
    assert build(spec, 10).cfg.cond_bn and build(spec, 10).cfg.cond_agg
    assert build(get_profile("smoke").spec("wrn-dropout"), 10).cfg.dropout > 0
    assert build(get_profile("smoke").spec("wrn"), 10).cfg.dropout == 0
