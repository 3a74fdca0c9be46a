"""The architecture space (paper Sec. 2): sampler, seeds, distinctness, fixed wirings,
validation and drawing."""
import hashlib
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nsa_core import space as sp

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ sampler statistics

def test_sampler_statistics(rng):
    nodes = 8
    w = np.stack([sp.sample_wiring(nodes, rng) for _ in range(2000)])
    assert w.shape == (2000, nodes + 1, nodes + 1)
    strict = np.tril(np.ones((nodes + 1, nodes + 1), bool), k=-1)
    # 2000 x 36 Bernoulli(0.3): the standard error of the density is ~0.0017.
    assert w[:, strict].mean() == pytest.approx(0.30, abs=0.01)
    # every strictly-lower position is on with probability 0.3 (standard error ~0.01)
    per_entry = w[:, strict].mean(0)
    assert np.all(np.abs(per_entry - 0.3) < 0.06), per_entry
    # the diagonal (the chain) is always on, nothing above it ever is
    assert np.all(w[:, np.arange(nodes + 1), np.arange(nodes + 1)] == 1)
    assert not np.triu(w, k=1).any()
    assert set(np.unique(w)) == {0, 1}


def test_training_space_statistics():
    s = sp.training_space(700, nodes=8, seed=5)  # 2,100 stage wirings
    assert s.shape == (700, 3, 9, 9)
    strict = np.tril(np.ones((9, 9), bool), k=-1)
    assert s[..., strict].mean() == pytest.approx(0.30, abs=0.01)
    # the three stages are drawn independently, not copied
    assert (s[:, 0] != s[:, 1]).any(axis=(1, 2)).mean() > 0.99
    assert np.all(np.diagonal(s, axis1=-2, axis2=-1) == 1)
    assert not np.triu(s, k=1).any()


def test_normalise_rows_are_uniform_means(rng):
    for _ in range(50):
        w = sp.sample_wiring(8, rng)
        n = sp.normalise(w)
        np.testing.assert_allclose(n.sum(-1), 1.0, rtol=1e-6)
        # each input a row reads gets weight 1 / (number of inputs), the rest 0
        expected = w / w.sum(-1, keepdims=True)
        np.testing.assert_allclose(n, expected, rtol=1e-6)
        assert np.all((n > 0) == (w == 1))
    arch = sp.training_space(4, nodes=5, seed=1)
    np.testing.assert_allclose(sp.normalise(arch).sum(-1), 1.0, rtol=1e-6)


# ------------------------------------------------------------------ seeds

_HASH_SCRIPT = (
    "import hashlib, sys\n"
    "from nsa_core.space import training_space\n"
    "seed = int(sys.argv[1])\n"
    "print(hashlib.sha256(training_space(50, 8, seed=seed).tobytes()).hexdigest())\n"
)


def _spawn(seed: int, hashseed: str) -> subprocess.Popen:
    env = {"PYTHONHASHSEED": hashseed, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "PATH": "/usr/bin:/bin"}
    return subprocess.Popen([sys.executable, "-c", _HASH_SCRIPT, str(seed)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_same_seed_same_space_across_processes():
    procs = [_spawn(3, "1"), _spawn(3, "987"), _spawn(4, "1")]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=60)
        assert p.returncode == 0, stderr
        out.append(stdout.strip())
    here = hashlib.sha256(sp.training_space(50, 8, seed=3).tobytes()).hexdigest()
    assert len(out[0]) == 64
    assert out[0] == out[1] == here
    assert out[2] != out[0]


def test_seed_changes_space_and_unseen_stream():
    a, b = sp.training_space(20, 8, seed=0), sp.training_space(20, 8, seed=1)
    assert np.array_equal(a, sp.training_space(20, 8, seed=0))
    assert not np.array_equal(a, b)
    u0 = sp.unseen_architectures(10, a, seed=0)
    assert np.array_equal(u0, sp.unseen_architectures(10, a, seed=0))
    assert not np.array_equal(u0, sp.unseen_architectures(10, a, seed=1))
    # the unseen stream is not the seen stream: had they shared one, the unseen draws
    # would be the training stream's next architectures
    u = sp.unseen_architectures(10, sp.training_space(1, 8, seed=0), seed=0)
    stream = {k.tobytes() for k in sp.training_space(50, 8, seed=0)}
    assert not {k.tobytes() for k in u} & stream


def test_global_rng_untouched():
    np.random.seed(7)
    random.seed(7)
    np_state, py_state = np.random.get_state(), random.getstate()
    s = sp.training_space(30, 8, seed=2)
    sp.unseen_architectures(10, s, seed=2)
    sp.sample_architecture(8, np.random.default_rng(0))
    after = np.random.get_state()
    assert np_state[0] == after[0]
    assert np.array_equal(np_state[1], after[1])
    assert np_state[2:] == after[2:]
    assert random.getstate() == py_state


# ------------------------------------------------------------------ distinctness

def _keys(archs):
    return [a.tobytes() for a in archs]


def test_training_space_distinct():
    s = sp.training_space(300, nodes=8, seed=0)
    assert s.shape == (300, 3, 9, 9) and s.dtype == np.uint8
    assert len(set(_keys(s))) == 300
    with pytest.raises(ValueError):
        sp.training_space(0)


def test_distinct_and_disjoint_in_tiny_space():
    # nodes=2: 3 strictly-lower entries per stage -> 8 wirings -> 512 architectures.
    raw_rng = np.random.default_rng(0)
    raw = [sp.sample_architecture(2, raw_rng) for _ in range(200)]
    assert len(set(_keys(raw))) < 200  # collisions do happen without the distinct draw
    seen = sp.training_space(200, nodes=2, seed=0)
    assert seen.shape == (200, 3, 3, 3)
    assert len(set(_keys(seen))) == 200
    unseen = sp.unseen_architectures(100, seen, seed=0)
    assert unseen.shape == (100, 3, 3, 3)
    assert len(set(_keys(unseen))) == 100
    assert not set(_keys(unseen)) & set(_keys(seen))
    for a in unseen:  # still valid members of the space
        sp.validate_architecture(a, nodes=2)


# ------------------------------------------------------------------ fixed wirings

def _resnet_wiring(nodes: int) -> np.ndarray:
    """Independent construction from ResNet semantics: block b has nodes 2b, 2b+1; node 2b
    reads the block input x_b = input + outputs of every earlier block's second node,
    node 2b+1 reads node 2b, and the stage output is x_{blocks}."""
    assert nodes % 2 == 0
    a = np.zeros((nodes + 1, nodes + 1), np.uint8)
    col = lambda node: node + 1  # noqa: E731  column of a node's output
    blocks = nodes // 2
    residual = lambda b: [0] + [col(2 * k + 1) for k in range(b)]  # noqa: E731
    for b in range(blocks):
        a[2 * b, residual(b)] = 1
        a[2 * b + 1, col(2 * b)] = 1
    a[nodes, residual(blocks)] = 1
    return a


def _spec_residual(nodes: int) -> np.ndarray:
    """The residual wiring: diagonal 1, and for every even column j, entries (j, j), (j+2, j), ... are 1."""
    a = np.zeros((nodes + 1, nodes + 1), np.uint8)
    for r in range(nodes + 1):
        for c in range(r + 1):
            if r == c or (r % 2 == 0 and c % 2 == 0):
                a[r, c] = 1
    return a


@pytest.mark.parametrize("nodes", [2, 4, 6, 8])
def test_residual_wiring_is_resnet(nodes):
    r = sp.residual_wiring(nodes)
    assert np.array_equal(r, _spec_residual(nodes))
    assert np.array_equal(r, _resnet_wiring(nodes))
    sp.validate_wiring(r, nodes)


def test_residual_wiring_8_blocks():
    r = sp.residual_wiring(8)
    reads = {i: set(np.flatnonzero(r[i])) for i in range(9)}
    assert reads[0] == {0}                 # node 0 reads the stage input
    assert reads[1] == {1}                 # node 1 reads node 0
    assert reads[2] == {0, 2}              # node 2 reads {input, node 1 output}
    assert reads[3] == {3}
    assert reads[4] == {0, 2, 4}           # input + blocks 1 and 2
    assert reads[6] == {0, 2, 4, 6}
    assert reads[8] == {0, 2, 4, 6, 8}     # output: input + the 4 blocks
    assert int(r.sum()) - 9 == 1 + 2 + 3 + 4  # skip edges: 10


def test_chain_and_fixed_architecture():
    for n in (3, 8):
        assert np.array_equal(sp.chain_wiring(n), np.eye(n + 1))
        assert sp.chain_wiring(n).dtype == np.uint8
    f = sp.fixed_architecture(sp.residual_wiring(8))
    assert f.shape == (3, 9, 9)
    assert all(np.array_equal(f[s], sp.residual_wiring(8)) for s in range(3))
    with pytest.raises(ValueError):
        sp.fixed_architecture(np.ones((9, 9)))


# ------------------------------------------------------------------ validation

@pytest.mark.parametrize("bad, rule", [
    (np.eye(4)[:, :3], "shape"),
    (np.eye(4)[None], "shape"),
    (np.ones(4), "shape"),
    (np.eye(4) * 2, "0 or 1"),
    (np.eye(4) * 0.5, "0 or 1"),
    (np.where(np.eye(4) == 1, 1, -1) * np.tri(4), "0 or 1"),
    (np.eye(4) + np.eye(4, k=1), "lower-triangular"),
    (np.eye(4) - np.diag([0, 0, 1, 0]), "diagonal"),
    (np.tri(4) - np.diag([1, 0, 0, 0]), "diagonal"),
])
def test_validate_wiring_rejects(bad, rule):
    with pytest.raises(ValueError, match=rule):
        sp.validate_wiring(bad)


def test_validate_wiring_node_count():
    with pytest.raises(ValueError, match="shape"):
        sp.validate_wiring(np.eye(9), nodes=4)
    with pytest.raises(ValueError, match="4 nodes"):
        sp.validate_wiring(np.eye(9), nodes=4)
    assert sp.validate_wiring(np.eye(5), nodes=4).shape == (5, 5)


@pytest.mark.parametrize("good", [
    np.tri(5, dtype=bool),
    np.tri(5, dtype=np.int64),
    np.eye(5).tolist(),
    sp.residual_wiring(4).astype(np.float64),
])
def test_validate_wiring_accepts(good):
    out = sp.validate_wiring(good)
    assert out.dtype == np.uint8
    assert np.array_equal(out, np.asarray(good).astype(np.uint8))


def test_validate_architecture():
    arch = sp.training_space(2, nodes=4, seed=0)
    assert sp.validate_architecture(arch, nodes=4).shape == (2, 3, 5, 5)
    assert sp.validate_architecture(arch[0]).dtype == np.uint8
    with pytest.raises(ValueError, match="shape"):
        sp.validate_architecture(arch[0, :2])            # 2 stages
    with pytest.raises(ValueError, match="shape"):
        sp.validate_architecture(np.stack([arch[0, 0]] * 4))  # 4 stages
    with pytest.raises(ValueError, match="shape"):
        sp.validate_architecture(arch[0, 0])             # a single wiring
    with pytest.raises(ValueError, match="shape"):
        sp.validate_architecture(arch, nodes=5)
    bad = arch.copy()
    bad[1, 2, 0, 3] = 1
    with pytest.raises(ValueError, match="lower-triangular"):
        sp.validate_architecture(bad)


# ------------------------------------------------------------------ drawing

def _skips(wiring: np.ndarray) -> str:
    k = int(wiring.sum()) - len(wiring)
    return f"{k} skip edge{'' if k == 1 else 's'}"


def test_draw_architectures_one_row():
    """One architecture: its three stage graphs, each titled with its stage and skip-edge count,
    one arrow per wiring entry (chain and skips); a malformed architecture is refused."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    arch = sp.training_space(1, nodes=8, seed=0)[0]
    fig = sp.draw_architectures({"seen #0": arch})
    try:
        assert isinstance(fig, Figure)
        assert len(fig.axes) == 3
        assert [sf._suptitle.get_text() for sf in fig.subfigs] == ["seen #0"]
        for s, ax in enumerate(fig.axes):
            assert ax.get_title() == f"stage {s + 1}\n{_skips(arch[s])}"
            assert len(ax.patches) == int(arch[s].sum())  # one arrow per wiring entry
    finally:
        plt.close(fig)
    with pytest.raises(ValueError):
        sp.draw_architectures({"two stages": arch[:2]})
    plt.close("all")


def test_draw_wirings_graph_above_matrix():
    """draw_wirings: per wiring a column with its graph (one arrow per entry) above its 0/1
    matrix (every lower-triangle entry written out); a malformed wiring is refused."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wirings = {"residual": sp.residual_wiring(4), "chain": sp.chain_wiring(4)}
    fig = sp.draw_wirings(wirings, title="two wirings")
    try:
        assert len(fig.axes) == 4 and fig._suptitle.get_text() == "two wirings"
        graphs, matrices = fig.axes[:2], fig.axes[2:]
        for (name, w), graph, matrix in zip(wirings.items(), graphs, matrices):
            assert graph.get_title() == f"{name}\n{_skips(w)}"
            assert len(graph.patches) == int(w.sum())
            assert len(matrix.images) == 1
            assert sorted(t.get_text() for t in matrix.texts) == sorted(str(w[i, j]) for i in range(5)
                                                                         for j in range(i + 1))
    finally:
        plt.close(fig)
    bad = sp.chain_wiring(4)
    bad[0, 3] = 1
    with pytest.raises(ValueError, match="lower-triangular"):
        sp.draw_wirings({"bad": bad})
    plt.close("all")


def test_draw_architectures_puts_each_architecture_in_a_row():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = sp.training_space(2, nodes=4, seed=0)
    fig = sp.draw_architectures({"first": archs[0], "second": archs[1]})
    try:
        assert len(fig.axes) == 6
        assert [sf._suptitle.get_text() for sf in fig.subfigs] == ["first", "second"]
    finally:
        plt.close(fig)
