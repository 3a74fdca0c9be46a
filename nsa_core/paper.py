"""Every number of the paper that a notebook, a claim or the benchmark quotes, in one place.
Accuracies and errors in %, unless a name says otherwise."""
from __future__ import annotations

# Sec. 3 / App. C: Spearman rank correlation between BN train and test mode over 100
# architectures, S -> (NSA, NSA-i).
SPEARMAN: dict[int, tuple[float, float]] = {500: (0.33, 0.588), 5000: (0.37, 0.395), 50000: (0.258, 0.615)}

# Sec. 4.1, Fig. 4: NSA-i's ensemble gain (accuracy, as a fraction) at S = 500, and the
# number of architectures after which no model gains further.
ENSEMBLE_GAIN_NSA_I = 0.003
SATURATION_T = 20

# Sec. 4.2, Table 1: S -> (AUC seen vs unseen, mean accuracy seen %, unseen %).
TABLE1: dict[int, tuple[float, float, float]] = {5: (1.00, 96.57, 91.81), 50: (0.77, 96.47, 96.23),
                                                 500: (0.57, 96.16, 96.12), 5000: (0.52, 96.01, 96.01)}

# Sec. 5.1, Table 2: data set -> method -> (# params, test error %, ECE).
TABLE2: dict[str, dict[str, tuple[float, float, float]]] = {
    "cifar10": {"wrn": (39.5e6, 2.93, 0.0140), "wrn-dropout": (39.5e6, 3.23, 0.0107),
                "single": (39.5e6, 2.97, 0.0153), "nsa-id": (39.6e6, 2.75, 0.0032)},
    "cifar100": {"wrn": (39.5e6, 16.75, 0.0672), "wrn-dropout": (39.5e6, 17.16, 0.0454),
                 "single": (39.5e6, 17.02, 0.0446), "nsa-id": (39.6e6, 16.44, 0.0212)},
}
# Footnote 6: the ensemble of the 5 individually trained architectures on CIFAR-10.
INDIVIDUALS_ENSEMBLE_ERROR = 2.36

# Sec. 5.2, Table 3: OOD AUC (CIFAR-10 test vs SVHN test) and, per PGD attack, (accuracy
# under attack, AUC of clean vs attacked by mutual information).
OOD_AUC: dict[str, float] = {"wrn-dropout": 0.935, "nsa-id": 0.970}
PGD: dict[str, dict[str, tuple[float, float]]] = {
    "wrn-dropout": {"PGD1-2-1": (0.622, 0.735), "PGD2-3-1": (0.345, 0.694), "PGD3-4-1": (0.183, 0.564)},
    "nsa-id": {"PGD1-2-1": (0.630, 0.737), "PGD2-3-1": (0.401, 0.705), "PGD3-4-1": (0.263, 0.618)},
}

# Sec. 5.3: test accuracy with 4,000 labelled CIFAR-10 images.
SEMI_ACCURACY: dict[str, float] = {"nsa-id": 86.96, "pi": 85.22, "labelled-only": 83.87}

# The authors' numerics: float32 throughout (no mixed precision in their release).
AUTHORS_PRECISION = "fp32"

# Throughput of the authors' public implementation on a 2-core CPU of the AMD EPYC kind,
# width 1, batch 128, fp32 (img/s); the benchmark's reference point.
AUTHORS_CPU_IMG_S: dict[str, float] = {"fixed": 85.0, "nsa-i": 82.0}
