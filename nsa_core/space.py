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


# ------------------------------------------------------------------------ drawings
CHAIN_COLOUR, SKIP_COLOUR = "#555555", "#c0392b"


def _draw_graph(ax, wiring: np.ndarray, title: str) -> None:
    """One stage DAG on `ax`: vertices on a line (0 the stage input, k node k, N+1 the
    output; row i of the matrix is vertex i + 1, column j vertex j), chain edges straight
    (grey), skip edges arcing (red)."""
    from matplotlib.patches import FancyArrowPatch

    n1 = wiring.shape[0]
    ax.scatter(range(n1 + 1), np.zeros(n1 + 1), s=330, c="#cfe3f7", edgecolors="#2b5d8a", zorder=3)
    for v in range(n1 + 1):
        ax.text(v, 0, "in" if v == 0 else "out" if v == n1 else str(v), ha="center", va="center", fontsize=7, zorder=4)
    for i, j in zip(*np.nonzero(wiring)):
        skip = i + 1 - j > 1
        ax.add_patch(FancyArrowPatch((j, 0), (i + 1, 0), arrowstyle="-|>", mutation_scale=9, lw=1.0,
                                     connectionstyle=f"arc3,rad={-0.45 if skip else 0}",
                                     color=SKIP_COLOUR if skip else CHAIN_COLOUR, shrinkA=8, shrinkB=8))
    ax.set_xlim(-0.6, n1 + 0.6)
    # equal aspect keeps arcs round; the widest (rad 0.45 over n1 nodes) rises 0.225 n1
    ax.set_ylim(-0.4, 0.23 * n1 + 0.3)
    ax.set_aspect("equal")
    ax.axis("off")
    skips = int(wiring.sum()) - n1
    ax.set_title(f"{title}\n{skips} skip edge{'' if skips == 1 else 's'}", fontsize=9)


def _draw_matrix(ax, wiring: np.ndarray) -> None:
    """The wiring as its 0/1 matrix, in the graph's colours; the upper triangle (which must
    stay 0: no node reads a later output) shaded."""
    n1 = wiring.shape[0]
    rgb = np.ones((n1, n1, 3))
    rgb[np.triu(np.ones((n1, n1), bool), k=1)] = (0.93, 0.93, 0.93)
    rgb[np.eye(n1, dtype=bool)] = (0.62, 0.62, 0.62)
    rgb[np.tril(wiring.astype(bool), k=-1)] = (0.94, 0.60, 0.55)
    ax.imshow(rgb)
    for i in range(n1):
        for j in range(i + 1):
            ax.text(j, i, str(wiring[i, j]), ha="center", va="center", fontsize=8,
                    color="black" if wiring[i, j] else "#999999")
    ax.set_xticks(range(n1), ["in"] + [str(k) for k in range(1, n1)], fontsize=7)
    ax.set_yticks(range(n1), [str(k) for k in range(1, n1)] + ["out"], fontsize=7)
    ax.set_xlabel("producer (column)", fontsize=8)
    ax.set_ylabel("consumer (row)", fontsize=8)
    ax.grid(False)


def draw_wirings(wirings: dict[str, np.ndarray], title: str | None = None):
    """One column per stage wiring (title -> 0/1 matrix (N+1, N+1)): the wiring as a graph on
    top and as its matrix below, in the same colours, so a reader can go from one to the other."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(wirings), figsize=(3.6 * len(wirings), 5.2), squeeze=False,
                             gridspec_kw={"height_ratios": [1, 2.4]})
    for col, (name, wiring) in enumerate(wirings.items()):
        a = validate_wiring(wiring)
        _draw_graph(axes[0, col], a, name)
        _draw_matrix(axes[1, col], a)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def draw_architectures(archs: dict[str, np.ndarray]):
    """Several architectures in one figure (the paper's Fig. 1), one row each (title ->
    architecture), its three stage graphs side by side under the row's title."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(4.2 * STAGES, 2.2 * len(archs)), layout="constrained")
    rows = fig.subfigures(len(archs), 1, squeeze=False)[:, 0]
    for row, (title, arch) in zip(rows, archs.items()):
        arch = validate_architecture(arch)
        for s, ax in enumerate(np.atleast_1d(row.subplots(1, STAGES))):
            _draw_graph(ax, arch[s], f"stage {s + 1}")
        if title:
            row.suptitle(title, fontsize=10, fontweight="bold")
    return fig
