"""The wiring-based architecture space (paper Sec. 2).

A stage wiring is a 0/1 matrix A of shape (N+1, N+1): row = consumer, column = producer.
Rows 0..N-1 feed nodes 0..N-1, row N is the stage output; column 0 is the stage input and
column k >= 1 the output of node k-1. A is lower-triangular with the diagonal on, so node i
always reads the output just before it (the chain). An architecture is one wiring per stage.

Every sampler takes a seed and builds its own numpy Generator: the global RNG is never
touched, so the same seed gives the same space on every run and machine.
"""
from __future__ import annotations

import numpy as np

STAGES = 3
P_EDGE = 0.3
# Independent streams of one seed: the training space and the unseen architectures never
# share random numbers, and unseen ones are also checked against the seen set.
_SEEN_STREAM, _UNSEEN_STREAM = 0, 1


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream]))


def sample_wiring(nodes: int, rng: np.random.Generator, p: float = P_EDGE) -> np.ndarray:
    """One stage wiring from the ER-p sampler with a chain: strictly-lower entries are on with
    probability p, the diagonal always."""
    a = np.tril(rng.random((nodes + 1, nodes + 1)) < p, k=-1).astype(np.uint8)
    np.fill_diagonal(a, 1)
    return a


def sample_architecture(nodes: int, rng: np.random.Generator, p: float = P_EDGE) -> np.ndarray:
    """One architecture: an independent wiring per stage, shape (3, N+1, N+1)."""
    return np.stack([sample_wiring(nodes, rng, p) for _ in range(STAGES)])


def _draw_distinct(n: int, nodes: int, rng: np.random.Generator, exclude: set[bytes]) -> np.ndarray:
    out, seen = [], set(exclude)
    while len(out) < n:
        arch = sample_architecture(nodes, rng)
        key = arch.tobytes()
        if key not in seen:  # a space of S distinct architectures, as the paper counts them
            seen.add(key)
            out.append(arch)
    return np.stack(out) if out else np.zeros((0, STAGES, nodes + 1, nodes + 1), np.uint8)


def training_space(size: int, nodes: int = 8, seed: int = 0) -> np.ndarray:
    """The refined training space: `size` distinct architectures, shape (S, 3, N+1, N+1)."""
    if size < 1:
        raise ValueError(f"the training space needs at least 1 architecture, got S={size}")
    return _draw_distinct(size, nodes, _rng(seed, _SEEN_STREAM), set())


def unseen_architectures(n: int, space: np.ndarray, seed: int = 0) -> np.ndarray:
    """`n` architectures from a stream disjoint from the training space's, none equal to any
    architecture in `space`."""
    nodes = space.shape[-1] - 1
    return _draw_distinct(n, nodes, _rng(seed, _UNSEEN_STREAM), {a.tobytes() for a in space})


def residual_wiring(nodes: int = 8) -> np.ndarray:
    """The wiring of WRN-28-10†: the chain plus, from every even column j, edges to rows
    j+2, j+4, ... This is a ResNet with two-conv blocks (4 blocks per stage for N = 8)."""
    a = np.eye(nodes + 1, dtype=np.uint8)
    for j in range(0, nodes + 1, 2):
        a[j::2, j] = 1
    return a


def chain_wiring(nodes: int = 8) -> np.ndarray:
    """The plain chain: every node reads only the output just before it."""
    return np.eye(nodes + 1, dtype=np.uint8)


def fixed_architecture(wiring: np.ndarray) -> np.ndarray:
    """The same stage wiring in all three stages, shape (3, N+1, N+1)."""
    return np.stack([validate_wiring(wiring)] * STAGES)


def validate_wiring(wiring, nodes: int | None = None) -> np.ndarray:
    """Check a user-supplied stage wiring and return it as uint8. Raises ValueError naming
    the first broken rule."""
    a = np.asarray(wiring)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"wiring shape: expected a square (N+1, N+1) matrix, got shape {a.shape}")
    if nodes is not None and a.shape[0] != nodes + 1:
        raise ValueError(f"wiring shape: expected ({nodes + 1}, {nodes + 1}) for {nodes} nodes, got {a.shape}")
    if not np.isin(a, (0, 1)).all():
        raise ValueError("wiring entries: every entry must be 0 or 1")
    if np.triu(a, k=1).any():
        raise ValueError("wiring lower-triangular: entries above the diagonal must be 0 "
                         "(row = consumer, column = producer; a node reads only earlier outputs)")
    if not np.diagonal(a).all():
        raise ValueError("wiring diagonal: every diagonal entry must be 1 (the chain)")
    return a.astype(np.uint8)


def validate_architecture(arch, nodes: int | None = None) -> np.ndarray:
    """Check one architecture (3, N+1, N+1) or a batch of them (B, 3, N+1, N+1)."""
    a = np.asarray(arch)
    if a.ndim not in (3, 4) or a.shape[-3] != STAGES:
        raise ValueError(f"architecture shape: expected (3, N+1, N+1) or (B, 3, N+1, N+1), got {a.shape}")
    flat = a.reshape(-1, a.shape[-2], a.shape[-1])
    return np.stack([validate_wiring(w, nodes) for w in flat]).reshape(a.shape)


def normalise(wiring: np.ndarray) -> np.ndarray:
    """Row-normalised wiring: every consumer takes the uniform mean of its inputs."""
    a = np.asarray(wiring, dtype=np.float32)
    return a / a.sum(-1, keepdims=True)


def _draw_stage(ax, wiring: np.ndarray, stage: int) -> None:
    """One stage DAG on `ax`: nodes on a line, chain edges straight, skip edges arcing."""
    import networkx as nx
    from matplotlib.patches import FancyArrowPatch

    n1 = wiring.shape[-1]
    g = nx.DiGraph()
    labels = {0: "in", n1: "out"} | {k: str(k) for k in range(1, n1)}
    g.add_nodes_from(range(n1 + 1))
    # Row i consumes column j; as a graph vertex, consumer row i is vertex i + 1.
    g.add_edges_from((j, i + 1) for i, j in zip(*np.nonzero(wiring)))
    pos = {v: (v, 0.0) for v in g}
    nx.draw_networkx_nodes(g, pos, ax=ax, node_size=260, node_color="#cfe3f7", edgecolors="#2b5d8a")
    nx.draw_networkx_labels(g, pos, labels, ax=ax, font_size=7)
    for u, v in g.edges:
        skip = v - u > 1
        ax.add_patch(FancyArrowPatch(pos[u], pos[v], arrowstyle="-|>", mutation_scale=8,
                                     connectionstyle=f"arc3,rad={-0.5 if skip else 0}",
                                     color="#c0392b" if skip else "#555", lw=0.9,
                                     shrinkA=7, shrinkB=7))
    ax.set_title(f"stage {stage + 1}: {int(wiring.sum() - n1)} skip edges", fontsize=9)
    ax.set_xlim(-0.6, n1 + 0.6)
    ax.set_ylim(-0.4, 2.2)
    ax.axis("off")


def draw_architecture(arch: np.ndarray, title: str | None = None):
    """Draw the three stage DAGs of an architecture (the paper's Fig. 1) and return the
    matplotlib figure. Nodes sit on a line; chain edges are straight, skip edges arc."""
    return draw_architectures({title or "": arch})


def draw_architectures(archs: dict[str, np.ndarray]):
    """Several architectures in one figure (the paper's Fig. 1), one row each (title ->
    architecture), its three stage DAGs side by side under the row's title."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(4.2 * STAGES, 2.5 * len(archs)), layout="constrained")
    rows = fig.subfigures(len(archs), 1, squeeze=False)[:, 0]
    for row, (title, arch) in zip(rows, archs.items()):
        arch = validate_architecture(arch)
        axes = row.subplots(1, STAGES)
        for s, ax in enumerate(np.atleast_1d(axes)):
            _draw_stage(ax, arch[s], s)
        if title:
            row.suptitle(title, fontsize=10, fontweight="bold")
    return fig
