"""Data: loading, class-balanced subsets, and batched GPU-friendly augmentation.

Every data set becomes one `Split` held in memory: uint8 images [N, 3, 32, 32] and int64 labels
(150 MB for CIFAR-10 train), so training indexes batches straight out of a tensor on any device
instead of going through a DataLoader with per-image Python transforms.

Where the data come from, in order: (1) a local copy in ImageFolder layout,
<data-dir>/<name>/<split>/<class>/* (classes in alphabetical order, the label order of
CIFAR-10/100 and SVHN; train and test must hold the same class folders); (2) fashion-mnist only:
the IDX files (.gz or not) in <data-dir>/fashion-mnist/ or torchvision's
<data-dir>/FashionMNIST/raw/; (3) torchvision's files in <data-dir>, downloaded when allowed.
"synthetic" is generated in memory. If nothing works, `DataMissing` says what to provide.

Each split is decoded once into <data-dir>/<name>/.nsa-cache/<split>.pt, which records the
listing of its source (every file's name, size and mtime, and the class folders). Every load
lists the source again (a stat per file, no decoding) and decodes again, saying why in one line,
when the listing differs; a cache whose source is gone altogether is used as it is. The identity
of a data set, which names the models trained on it, is the hash of those listings.

All randomness comes from explicitly seeded torch.Generators, never the global RNG, so subsets,
evaluation order and augmentation are reproducible and resumable.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import shutil
import struct
import sys
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import paths
from .checkpoint import atomic_save, remove_stale_temporaries

DATASETS = ("cifar10", "cifar100", "svhn", "fashion-mnist", "synthetic")
SPLITS = ("train", "test")
NUM_CLASSES: dict[str, int] = {"cifar10": 10, "cifar100": 100, "svhn": 10, "fashion-mnist": 10, "synthetic": 10}
# Per-channel statistics on the 0..1 scale, of each set's training split as stored here
# (32x32x3). Fashion-MNIST's are for the zero-padded 32x32 copy. To score one set with a
# model trained on another (OOD detection), normalise with the *training* set's name.
MEAN: dict[str, tuple[float, float, float]] = {
    "cifar10": (0.4914, 0.4822, 0.4465),
    "cifar100": (0.5071, 0.4865, 0.4409),
    "svhn": (0.4377, 0.4438, 0.4728),
    "fashion-mnist": (0.2190, 0.2190, 0.2190),
    "synthetic": (0.5, 0.5, 0.5),
}
STD: dict[str, tuple[float, float, float]] = {
    "cifar10": (0.2470, 0.2435, 0.2616),
    "cifar100": (0.2673, 0.2564, 0.2762),
    "svhn": (0.1980, 0.2010, 0.1970),
    "fashion-mnist": (0.3318, 0.3318, 0.3318),
    "synthetic": (0.27, 0.27, 0.27),
}
SYNTHETIC_SIZE = {"train": 2048, "test": 512}
_CACHE_VERSION = 2   # 2: records the listing of its source


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, 3, 32, 32], CPU
    labels: torch.Tensor  # int64 [N]
    classes: list[str]
    name: str

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: torch.Tensor) -> Split:
        return Split(self.images[idx], self.labels[idx], self.classes, self.name)

    def fingerprint(self) -> str:
        """A hash of the images and labels, in order: what caches of results on this split
        are keyed by (two copies of a data set that differ in one pixel differ here)."""
        h = hashlib.sha1(self.images.contiguous().numpy().tobytes())
        h.update(self.labels.numpy().tobytes())
        return h.hexdigest()[:16]


class DataMissing(RuntimeError):
    """A data set is neither on disk nor downloadable; the message says how to provide it."""


class DataError(ValueError):
    """The data on disk cannot be used as it is; the message names the file or folder and what to do."""


# ----------------------------------------------------------------------------- sources

@dataclass(frozen=True)
class Source:
    """What one split is decoded from, as the file system lists it. `files` maps each file's
    name (relative to `folder`, in decoding order) to its size and mtime in ns; `digest`
    changes whenever a file is added, removed, renamed, rewritten or touched, or a class
    folder appears or goes."""
    kind: str                             # "folder" (ImageFolder), "idx" or "torchvision"
    folder: Path
    files: dict[str, tuple[int, int]]
    classes: tuple[str, ...] = ()         # "folder": the class folders, in label order

    @cached_property
    def digest(self) -> str:
        return hashlib.sha1(json.dumps([self.kind, list(self.classes), list(self.files.items())]).encode()).hexdigest()


def _stat(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _class_folders(folder: Path) -> list[str]:
    # torchvision's ImageFolder rule (find_classes): every sub-folder is a class, sorted
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def _image_folder_source(folder: Path) -> Source:
    """The files of an ImageFolder copy in the order, and with the labels, that torchvision's
    ImageFolder gives them (its make_dataset), so the decoded split is the one ImageFolder would load."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    classes = _class_folders(folder)
    if not classes:
        raise DataError(f"{folder} holds no images in <class>/<image> layout (no class folders)")
    samples = make_dataset(str(folder), {c: i for i, c in enumerate(classes)}, IMG_EXTENSIONS, allow_empty=True)
    empty = sorted(set(classes) - {classes[i] for _, i in samples})
    if empty:
        raise DataError(f"class folder {folder / empty[0]} has no images; put its images there or remove it "
                        f"({len(empty)} class folder(s) without images in {folder})")
    top = len(str(folder)) + 1   # relative names by slicing: os.path.relpath per file costs more than the stat
    return Source("folder", folder, {path[top:]: _stat(path) for path, _ in samples}, tuple(classes))


def _locate(name: str, split: str, root: Path) -> tuple[str, Path, list[str]] | None:
    """Which local copy `load` decodes `split` from, without reading it: (kind, folder, the
    files for "idx" and "torchvision"), or None when there is none."""
    import torchvision.datasets as tvd

    folder = root / name / split
    if folder.is_dir():
        return "folder", folder, []
    if name == "fashion-mnist":   # the IDX files, .gz or not; torchvision keeps them in FashionMNIST/raw/
        p = "t10k" if split == "test" else "train"
        found = [("idx", base, [f"{p}-images-idx3-ubyte{ext}", f"{p}-labels-idx1-ubyte{ext}"])
                 for base in (root / "fashion-mnist", root / "FashionMNIST" / "raw") for ext in ("", ".gz")]
    elif name == "svhn":
        found = [("torchvision", root / "svhn", [tvd.SVHN.split_list[split][1]])]
    else:
        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        listed = cls.train_list if split == "train" else cls.test_list
        found = [("torchvision", root / cls.base_folder, [f for f, _ in listed] + [cls.meta["filename"]])]
    return next(((kind, base, files) for kind, base, files in found if all((base / f).is_file() for f in files)), None)


def source(name: str, split: str, data_dir: str | Path | None = None) -> Source | None:
    """The listing of the local copy of `split` (a stat per file, nothing decoded), None when
    there is none; DataError when it cannot be used (no images in a class folder, train and
    test class folders that differ)."""
    root = resolve_data_dir(data_dir)
    found = _locate(name, split, root)
    if found is None:
        return None
    kind, folder, files = found
    if kind != "folder":
        return Source(kind, folder, {f: _stat(os.path.join(folder, f)) for f in files})
    # the two splits must name the same classes, or a label means one class in training and another in testing
    train, test = root / name / "train", root / name / "test"
    if train.is_dir() and test.is_dir() and (a := set(_class_folders(train))) != (b := set(_class_folders(test))):
        only = lambda s, t: ", ".join(sorted(s - t)[:5]) or "none"  # noqa: E731
        raise DataError(f"the class folders of {train} and {test} differ (only in train: {only(a, b)}; "
                        f"only in test: {only(b, a)}); both splits need the same class folders")
    return _image_folder_source(folder)


def on_disk(name: str, split: str, data_dir: str | Path | None = None) -> bool:
    """Whether `split` of `name` can be loaded without a download (a local copy or its decode
    cache), checked without reading either."""
    root = resolve_data_dir(data_dir)
    return name == "synthetic" or _locate(name, split, root) is not None or _cache_path(root, name, split).is_file()


def _changes(old: dict, new: Source) -> str:
    """How a listing changed, in a few words: '3 files changed, 10 added, 10 removed'."""
    before, after = old.get("files", {}), new.files
    changed = sum(tuple(before[f]) != tuple(after[f]) for f in before.keys() & after.keys())
    counts = [(n, what) for n, what in ((changed, "changed"), (len(after.keys() - before.keys()), "added"),
                                        (len(before.keys() - after.keys()), "removed")) if n]
    parts = [f"{n} file{'s' if n != 1 else ''} {what}" if i == 0 else f"{n} {what}"
             for i, (n, what) in enumerate(counts)]
    if tuple(old.get("listed_classes", ())) != new.classes:
        parts.append("class folders changed")
    return ", ".join(parts) or "its source changed"


# ----------------------------------------------------------------------------- loading

def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The data folder (paths.data_dir's rule: the argument, else $NSA_DATA_DIR, else <repo>/data)."""
    return paths.data_dir(data_dir)


def _cache_path(root: Path, name: str, split: str) -> Path:
    return root / name / ".nsa-cache" / f"{split}.pt"


def load(name: str, split: str = "train", data_dir: str | Path | None = None, download: bool = True,
         synthetic_size: int | None = None, seed: int = 0) -> Split:
    """One split of a data set as uint8 images [N, 3, 32, 32] and int64 labels.
    `synthetic_size` and `seed` only matter for "synthetic"."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if name == "synthetic":
        return synthetic(split, synthetic_size, seed)

    root = resolve_data_dir(data_dir)
    cache = _cache_path(root, name, split)
    src = source(name, split, root)
    record = _read_cache(cache)
    if isinstance(record, dict) and (src is None or record["source"] == src.digest):
        return Split(record["images"], record["labels"], list(record["classes"]), name)
    if src is not None and record is not None:
        why = f"stale ({_changes(record, src)})" if isinstance(record, dict) else record
        print(f"nsa: data cache of {name}/{split} is {why}; decoding again", file=sys.stderr, flush=True)
    if src is None or src.kind == "torchvision":   # torchvision's files, downloaded when there are none
        existed = root.exists()
        try:
            out = _from_torchvision(name, split, root, download and src is None)
        except DataMissing:
            if not existed:   # a mistyped --data-dir must not be left behind as an empty folder
                shutil.rmtree(root, ignore_errors=True)
            raise
        src = source(name, split, root)   # the files read, or just downloaded
    elif src.kind == "folder":
        out = _from_image_folder(src, name)
    else:
        out = _from_idx(*(src.folder / f for f in src.files))
    if src is not None:
        _write_cache(cache, out, src)
    return out


def prepare(name: str, data_dir: str | Path | None = None) -> None:
    """Both splits of `name` on disk and decoded into their caches (downloading when needed), so
    that the workers that train on them only read the caches; the errors of `load`."""
    for split in SPLITS:
        load(name, split, data_dir)


def identity(name: str, data_dir: str | Path | None = None, synthetic_size: int | None = None,
             download: bool = True) -> str:
    """The identity of a data set as a model sees it: a hash of the listings of its training
    and test splits (`source`), so it changes whenever the data do, and costs no decoding.
    Without a local copy it is the listing recorded in the decode cache, else the data are
    downloaded first (DataMissing with download=False). The synthetic set's: a hash of its
    images and labels."""
    h = hashlib.sha1()
    if name == "synthetic":
        for split in SPLITS:
            h.update(synthetic(split, synthetic_size if split == "train" else None).fingerprint().encode())
        return h.hexdigest()[:12]
    root = resolve_data_dir(data_dir)
    for split in SPLITS:
        src = source(name, split, root)
        record = _read_cache(_cache_path(root, name, split), peek=True) if src is None else None
        if src is None and not isinstance(record, dict):
            if not download:
                raise DataMissing(_missing_message(name, split, root, "nothing on disk, and download=False"))
            load(name, split, root)
            return identity(name, root, synthetic_size, download=False)
        h.update(f"{split}:{src.digest if src is not None else record['source']}".encode())
    return h.hexdigest()[:12]


def _read_cache(path: Path, peek: bool = False) -> dict | str | None:
    """The decode cache's record, None when there is none, or why it cannot be used. `peek`
    maps the tensors instead of reading them: for the recorded listing alone."""
    if not path.is_file():
        return None
    try:
        d = torch.load(path, weights_only=True, mmap=peek)
        if d.get("version") != _CACHE_VERSION:
            return "of an older version"
        images, labels = d["images"], d["labels"]
        ok = (images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1:] == (3, 32, 32)
              and labels.dtype == torch.int64 and labels.shape == (len(images),)
              and isinstance(d["source"], str) and isinstance(d["files"], dict))
    except Exception:  # a torn or foreign file: any unpickling error means "rebuild it"
        ok = False
    return d if ok else "unreadable"


def _write_cache(path: Path, data: Split, src: Source) -> None:
    # Atomic, so a concurrent or interrupted load never sees half a file; temporaries of
    # killed writers (a full-size copy each) go first. A read-only data folder just means no
    # cache, not a failed load.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent)
        atomic_save({"version": _CACHE_VERSION, "images": data.images, "labels": data.labels,
                     "classes": data.classes, "source": src.digest, "files": src.files,
                     "listed_classes": src.classes}, path)
        path.with_suffix(".fingerprint").unlink(missing_ok=True)   # the identity record of version 1 caches
    except OSError as e:
        warnings.warn(f"could not write data cache {path} ({e}); loads will decode again", stacklevel=3)


def _from_image_folder(src: Source, name: str) -> Split:
    if len(src.classes) != NUM_CLASSES[name]:
        warnings.warn(f"{src.folder} has {len(src.classes)} class folders, {name} has "
                      f"{NUM_CLASSES[name]}: labels follow the folders found", stacklevel=3)
    label = {c: i for i, c in enumerate(src.classes)}
    images = torch.empty(len(src.files), 3, 32, 32, dtype=torch.uint8)
    labels = torch.empty(len(src.files), dtype=torch.int64)
    for i, rel in enumerate(src.files):  # runs once per change of the data, then the cache
        path = str(src.folder / rel)
        images[i] = _to_32x32_rgb(_decode(path), path)
        labels[i] = label[Path(rel).parts[0]]
    return Split(images, labels, list(src.classes), name)


def _decode(path: str) -> torch.Tensor:
    # PIL rather than torchvision.io, whose image decoding is deprecated since 0.29. A
    # truncated file raises here too (PIL refuses to load truncated images by default).
    try:
        with Image.open(path) as im:
            return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"image {path} cannot be decoded ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                        "replace or remove it, then load again") from None


def _to_32x32_rgb(img: torch.Tensor, what: str = "") -> torch.Tensor:
    """[C, H, W] or [N, C, H, W] uint8 -> 3 channels at 32x32. 28x28 (MNIST-style) images
    are zero-padded by 2 pixels a side, as is usual when feeding them to CIFAR nets."""
    if img.shape[-3] == 1:
        img = img.expand(*img.shape[:-3], 3, *img.shape[-2:])
    if img.shape[-2:] == (28, 28):
        img = F.pad(img, (2, 2, 2, 2))
    if img.shape[-3:] != (3, 32, 32):
        raise DataError(f"expected 32x32 (or 28x28) images, got {tuple(img.shape)} {what}")
    return img.contiguous()


def _read_idx(path: Path) -> torch.Tensor:
    """An IDX file (the MNIST format) of unsigned bytes, gzipped or not."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    return torch.frombuffer(bytearray(raw[4 + 4 * ndim:]), dtype=torch.uint8).view(shape)


def _from_idx(images: Path, labels: Path) -> Split:
    from torchvision.datasets import FashionMNIST

    x = _to_32x32_rgb(_read_idx(images).unsqueeze(1))
    y = _read_idx(labels).to(torch.int64)
    return Split(x, y, list(FashionMNIST.classes), "fashion-mnist")


def _missing_message(name: str, split: str, root: Path, reason: str) -> str:
    local = f"put a local copy in ImageFolder layout at {root}/{name}/{{train,test}}/<class>/*"
    if name == "fashion-mnist":
        prefix = "t10k" if split == "test" else "train"
        local += (f", or the IDX files at {root}/fashion-mnist/{prefix}-*-idx*-ubyte.gz "
                  f"(or torchvision's {root}/FashionMNIST/raw/)")
    why = " ".join(reason.split())  # torchvision's errors span lines; the message must not
    return (f"data set {name!r} ({split}) not found in {root} ({why}). Either (a) run where "
            f"torchvision can download it (download=True, the default), or (b) {local}.")


def _from_torchvision(name: str, split: str, root: Path, download: bool) -> Split:
    import torchvision.datasets as tvd

    train = split == "train"
    try:
        if name in ("cifar10", "cifar100"):
            cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            ds = cls(str(root), train=train, download=download)
            images = torch.from_numpy(ds.data).permute(0, 3, 1, 2)  # stored HWC
            labels, classes = ds.targets, ds.classes
        elif name == "svhn":
            ds = tvd.SVHN(str(root / "svhn"), split=split, download=download)
            images, labels = torch.from_numpy(ds.data), ds.labels
            classes = [str(i) for i in range(10)]
        else:  # fashion-mnist: torchvision stores the IDX files where _locate looks
            ds = tvd.FashionMNIST(str(root), train=train, download=download)
            images, labels, classes = ds.data.unsqueeze(1), ds.targets, list(ds.classes)
    # Offline downloads fail with URLError/OSError deep in urllib, and torchvision reports
    # absent files as RuntimeError: both mean "not available here", said in one line.
    except (OSError, RuntimeError, http.client.HTTPException) as e:
        reason = f"download failed: {type(e).__name__}: {e}" if download else "download=False"
        raise DataMissing(_missing_message(name, split, root, reason)) from None
    images = _to_32x32_rgb(torch.as_tensor(images, dtype=torch.uint8))
    return Split(images, torch.as_tensor(labels, dtype=torch.int64), classes, name)


# ----------------------------------------------------------------------------- synthetic

def synthetic(split: str = "train", size: int | None = None, seed: int = 0, num_classes: int = 10) -> Split:
    """A learnable stand-in for CIFAR that needs no files: each class is a smooth random
    colour pattern; each image is its class pattern at a random shift, with random contrast
    and pixel noise, so no single pixel gives the class away but a small CNN learns it fast.
    The same seed gives the same class patterns for train and test, different samples."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    n = size if size is not None else SYNTHETIC_SIZE[split]
    # Disjoint streams per seed: patterns, train samples, test samples.
    g_pat = torch.Generator().manual_seed(3 * seed)
    g = torch.Generator().manual_seed(3 * seed + 1 + SPLITS.index(split))

    # 5x5 random colours upsampled to 40x40: blobs of ~8 px, bigger than the 32 px view
    # so that a shift reveals a different part of the same pattern.
    coarse = torch.rand(num_classes, 3, 5, 5, generator=g_pat)
    patterns = F.interpolate(coarse, size=(40, 40), mode="bicubic", align_corners=False)

    labels = torch.randperm(n, generator=g) % num_classes  # int64, balanced up to n % classes
    dy, dx = torch.randint(0, 9, (2, n), generator=g)
    rows = dy[:, None] + torch.arange(32)
    cols = dx[:, None] + torch.arange(32)
    x = patterns[labels[:, None, None, None], torch.arange(3)[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]
    contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=g)
    x = 0.5 + contrast * (x - 0.5) + 0.15 * torch.randn(x.shape, generator=g)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return Split(images, labels, [f"class{i}" for i in range(num_classes)], "synthetic")


# ----------------------------------------------------------------------------- subsets

def balanced_subset(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of `n` examples, exactly n // C from each of the C classes present,
    chosen at random (fixed by `seed`)."""
    classes = torch.unique(labels)
    if n % len(classes):
        raise ValueError(f"n={n} is not divisible by the {len(classes)} classes")
    per_class = n // len(classes)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    shuffled = labels.cpu()[perm]
    picked = []
    for c in classes.tolist():
        idx = perm[shuffled == c]
        if len(idx) < per_class:
            raise ValueError(f"class {c} has {len(idx)} examples, fewer than {per_class}")
        picked.append(idx[:per_class])
    return torch.cat(picked).sort().values


def labelled_split(labels: torch.Tensor, n_labelled: int = 4000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(labelled, unlabelled) sorted indices for semi-supervised learning (notebook 08): as in
    the authors' script, `n_labelled` images drawn at random with a fixed seed (not balanced
    by class), every other image unlabelled."""
    if not 0 < n_labelled < len(labels):
        raise ValueError(f"labelled must lie between 1 and {len(labels) - 1}, got {n_labelled}")
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    return perm[:n_labelled].sort().values, perm[n_labelled:].sort().values


def eval_order(n: int, seed: int = 0) -> torch.Tensor:
    """One fixed permutation of range(n) to evaluate in. ImageFolder copies are sorted by
    class, and with BN in training mode a batch of one class normalises itself away (the
    training-mode BN pitfall), so evaluation batches must mix classes like training batches."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def eval_subset(name: str, data_dir: str | Path | None = None, n: int | None = None) -> Split:
    """The test split in the fixed shuffled `eval_order`, first `n` images (all when None):
    the one evaluation set that training histories and every notebook use."""
    test = load(name, "test", data_dir)
    order = eval_order(len(test), seed=0)
    return test.subset(order[:n] if n else order)


# ----------------------------------------------------------------------------- transforms

def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 0..1; floats are taken to be on 0..1 already."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def normalize(x: torch.Tensor, name: str) -> torch.Tensor:
    """[B, 3, H, W] (or [3, H, W]) uint8 or 0..1 float -> float32 normalised per channel."""
    mean = torch.tensor(MEAN[name], device=x.device).view(3, 1, 1)
    std = torch.tensor(STD[name], device=x.device).view(3, 1, 1)
    return (to_unit(x) - mean) / std


def augment(x: torch.Tensor, generator: torch.Generator, cutout: int = 16, pad: int = 4,
            flip: bool = True) -> torch.Tensor:
    """The paper's augmentation for a whole batch [B, C, H, W] (uint8 or float), same dtype out:
    random crop with `pad` zero pixels a side, horizontal flip with p = 1/2, then `cut_out` of
    `cutout` pixels. All randomness is drawn from `generator`, which must live on x.device, so
    training is reproducible and resumable. 0 turns off cutout or pad."""
    b, c, h, w = x.shape
    dev = x.device
    # Crop and flip are one gather: output pixel (i, j) reads padded pixel
    # (dy + i, dx + j), or (dy + i, dx + w - 1 - j) when flipped.
    dy, dx = torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device=dev)
    j = torch.arange(w, device=dev)
    cols = dx[:, None] + j
    if flip:
        flipped = torch.rand(b, generator=generator, device=dev) < 0.5
        cols = torch.where(flipped[:, None], dx[:, None] + (w - 1 - j), cols)
    rows = dy[:, None] + torch.arange(h, device=dev)
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    out = padded[torch.arange(b, device=dev)[:, None, None, None],
                 torch.arange(c, device=dev)[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]
    return cut_out(out, generator, cutout)


def cut_out(x: torch.Tensor, generator: torch.Generator, size: int = 16) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): one `size`-pixel square per image set to 0, its centre
    uniform over the image, clipped at the borders. On normalised images, as the authors
    apply it, 0 is the data set's mean colour; on raw pixels it is black. 0 = no hole."""
    if not size:
        return x
    b, _, h, w = x.shape
    dev = x.device
    cy = torch.randint(0, h, (b,), generator=generator, device=dev)
    cx = torch.randint(0, w, (b,), generator=generator, device=dev)
    y0 = torch.arange(h, device=dev)[None] - cy[:, None]
    x0 = torch.arange(w, device=dev)[None] - cx[:, None]
    # [y - s/2, y + s/2) clipped to the image, as in the reference implementation
    in_y = (y0 >= -(size // 2)) & (y0 < size - size // 2)
    in_x = (x0 >= -(size // 2)) & (x0 < size - size // 2)
    hole = in_y[:, None, :, None] & in_x[:, None, None, :]
    return x.masked_fill(hole, 0)


def training_view(x: torch.Tensor, generator: torch.Generator, norm: str, cutout: int) -> torch.Tensor:
    """One augmented, normalised view of a uint8 batch, in the authors' order: random crop
    from the black-padded image and flip, normalisation, then Cutout (so the hole is the
    data set's mean, not black)."""
    return cut_out(normalize(augment(x, generator, cutout=0), norm), generator, cutout)
