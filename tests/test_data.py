"""Tests for nsa_core.data: loading (ImageFolder, IDX, torchvision offline), caching,
synthetic data, seeded subsets and the batched augmentation."""
from __future__ import annotations

import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from PIL import Image

from nsa_core import data

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]
# Distinct solid colours, 4 per class, for the fake ImageFolder tree.
COLOURS = {
    "airplane": [(250, 10, 10), (10, 250, 10), (10, 10, 250), (200, 200, 10)],
    "bird": [(10, 200, 200), (200, 10, 200), (120, 120, 120), (250, 250, 250)],
    "cat": [(30, 60, 90), (90, 60, 30), (160, 40, 100), (5, 5, 5)],
}


def _fake_image_folder(root: Path, ext: str, splits: tuple[str, ...] = ("train",)) -> None:
    for split in splits:
        for cls in ["cat", "airplane", "bird"]:  # created out of order on purpose
            folder = root / "cifar10" / split / cls
            folder.mkdir(parents=True)
            for i, colour in enumerate(COLOURS[cls]):
                Image.new("RGB", (32, 32), colour).save(folder / f"{i:04d}.{ext}", quality=95)


def _load_fake(root: Path) -> data.Split:
    with pytest.warns(UserWarning, match="3 class folders"):  # 3 of CIFAR-10's 10 classes
        return data.load("cifar10", "train", data_dir=root, download=False)


# ----------------------------------------------------------------------------- loading

@pytest.mark.parametrize("ext, tol", [("png", 0), ("jpg", 4)])
def test_image_folder_labels_pixels_and_cache(tmp_path, ext, tol):
    _fake_image_folder(tmp_path, ext)
    split = _load_fake(tmp_path)
    assert split.name == "cifar10" and split.classes == ["airplane", "bird", "cat"]
    assert split.images.dtype == torch.uint8 and split.images.shape == (12, 3, 32, 32)
    assert split.labels.dtype == torch.int64
    assert split.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    expected = torch.tensor([c for cls in split.classes for c in COLOURS[cls]], dtype=torch.int16)
    diff = (split.images.to(torch.int16) - expected[:, :, None, None]).abs()
    assert diff.max() <= tol

    # The second load reads the cache: it works with the images gone.
    assert (tmp_path / "cifar10" / ".nsa-cache" / "train.pt").is_file()
    shutil.rmtree(tmp_path / "cifar10" / "train")
    again = data.load("cifar10", "train", data_dir=tmp_path, download=False)
    assert torch.equal(again.images, split.images) and torch.equal(again.labels, split.labels)
    assert again.classes == split.classes


def test_unreadable_cache_is_rebuilt(tmp_path, capsys):
    _fake_image_folder(tmp_path, "png")
    cache = tmp_path / "cifar10" / ".nsa-cache" / "train.pt"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"not a torch file")
    split = _load_fake(tmp_path)
    assert capsys.readouterr().err.splitlines() == ["nsa: data cache of cifar10/train is unreadable; decoding again"]
    assert len(split) == 12
    assert torch.load(cache, weights_only=True)["images"].shape == (12, 3, 32, 32)


def test_the_decoded_order_is_imagefolders(tmp_path):
    """The listing decides the order and the labels; they must be torchvision ImageFolder's
    (the committed results were trained in that order), nested folders, odd names and files
    that are no images included."""
    from torchvision.datasets import ImageFolder

    _fake_image_folder(tmp_path, "png")
    folder = tmp_path / "cifar10" / "train"
    (folder / "bird" / "sub").mkdir()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(folder / "bird" / "sub" / "0000.png")
    Image.new("RGB", (32, 32), (4, 5, 6)).save(folder / "cat" / "B.PNG")
    (folder / "cat" / "notes.txt").write_text("not an image")
    split = _load_fake(tmp_path)
    reference = ImageFolder(str(folder))
    assert split.classes == reference.classes
    assert split.labels.tolist() == reference.targets
    src = data.source("cifar10", "train", tmp_path)
    assert [str(folder / f) for f in src.files] == [p for p, _ in reference.samples]


def test_a_stale_cache_is_decoded_again_and_says_why(tmp_path, capsys):
    _fake_image_folder(tmp_path, "png", ("train", "test"))
    first = _load_fake(tmp_path)
    before = data.identity("cifar10", tmp_path)
    cat = tmp_path / "cifar10" / "train" / "cat"
    Image.new("RGB", (32, 32), (99, 99, 99)).save(cat / "0001.png")   # same name, new pixels
    (cat / "0003.png").rename(tmp_path / "cifar10" / "train" / "bird" / "0009.png")   # one image moves class
    capsys.readouterr()
    again = _load_fake(tmp_path)
    assert capsys.readouterr().err.splitlines() == [
        "nsa: data cache of cifar10/train is stale (1 file changed, 1 added, 1 removed); decoding again"]
    assert not torch.equal(again.images, first.images)
    assert again.labels.tolist() == [0] * 4 + [1] * 5 + [2] * 3
    assert data.identity("cifar10", tmp_path) != before          # other data: other models
    assert torch.equal(data.load("cifar10", "train", tmp_path).images, again.images)   # the new cache
    assert capsys.readouterr().err == ""


def test_identity_is_read_from_the_listing_without_decoding(tmp_path, monkeypatch):
    _fake_image_folder(tmp_path, "png", ("train", "test"))
    monkeypatch.setattr(data, "_decode", lambda path: pytest.fail("decoded"))
    identity = data.identity("cifar10", tmp_path, download=False)
    assert not (tmp_path / "cifar10" / ".nsa-cache").exists()   # and nothing written
    assert identity == data.identity("cifar10", tmp_path, download=False)
    with pytest.raises(data.DataMissing, match="nothing on disk"):
        data.identity("cifar100", tmp_path, download=False)


def test_train_and_test_must_name_the_same_classes(tmp_path):
    _fake_image_folder(tmp_path, "png")
    test = tmp_path / "cifar10" / "test"
    for cls in ("airplane", "bird", "kitten"):
        (test / cls).mkdir(parents=True)
        Image.new("RGB", (32, 32), (1, 1, 1)).save(test / cls / "0.png")
    for split in ("train", "test"):
        with pytest.raises(data.DataError, match=r"differ \(only in train: cat; only in test: kitten\)"):
            data.load("cifar10", split, tmp_path, download=False)
    with pytest.raises(data.DataError, match="differ"):
        data.identity("cifar10", tmp_path, download=False)


def test_unwritable_cache_still_loads(tmp_path, monkeypatch):
    _fake_image_folder(tmp_path, "png")

    def refuse(*args, **kwargs):
        raise PermissionError("read-only")

    monkeypatch.setattr(torch, "save", refuse)
    with pytest.warns(UserWarning, match="could not write data cache"):
        split = _load_fake(tmp_path)
    assert len(split) == 12
    assert not list((tmp_path / "cifar10" / ".nsa-cache").iterdir())  # no tmp file left


def test_cifar10_jpeg_copy_class_order(tmp_path):
    tarball = SHARED_DATA / "cifar10-jpeg.tar.gz"
    if not tarball.is_file():
        pytest.skip(f"no local CIFAR-10 copy at {tarball}")
    per_class, counts = 20, dict.fromkeys(CIFAR10_CLASSES, 0)
    # Extract only the first few test images of each class; the test split comes first.
    with tarfile.open(tarball, "r:gz") as tf:
        for member in tf:
            parts = member.name.split("/")
            if len(parts) == 4 and parts[1] == "test" and member.isfile():
                if counts[parts[2]] < per_class:
                    counts[parts[2]] += 1
                    out = tmp_path / member.name
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(tf.extractfile(member).read())
            if min(counts.values()) == per_class:
                break
    split = data.load("cifar10", "test", data_dir=tmp_path, download=False)
    assert split.classes == CIFAR10_CLASSES
    assert split.images.shape == (10 * per_class, 3, 32, 32)
    assert torch.bincount(split.labels).tolist() == [per_class] * 10
    assert split.labels.tolist() == sorted(split.labels.tolist())  # ImageFolder is by class
    # ...which is why evaluation goes through eval_order: its first batch mixes classes.
    assert len(split.labels[data.eval_order(len(split))[:32]].unique()) >= 5


@pytest.mark.parametrize("layout", ["fashion-mnist", "FashionMNIST/raw"])
def test_fashion_mnist_from_idx_files(tmp_path, layout):
    src = SHARED_DATA / "fashion-mnist"
    if not (src / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"no local Fashion-MNIST copy at {src}")
    (tmp_path / layout).mkdir(parents=True)
    for f in src.glob("t10k-*-idx*-ubyte.gz"):
        (tmp_path / layout / f.name).symlink_to(f)
    split = data.load("fashion-mnist", "test", data_dir=tmp_path, download=False)
    assert split.images.shape == (10_000, 3, 32, 32) and split.images.dtype == torch.uint8
    assert torch.bincount(split.labels).tolist() == [1000] * 10
    assert split.classes[0] == "T-shirt/top" and len(split.classes) == 10
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert split.images[:, :, border].eq(0).all()  # the 2-pixel zero padding
    assert split.images[:, :, 2:30, 2:30].float().mean() > 50  # real pixels inside
    assert torch.equal(split.images[:, 0], split.images[:, 2])  # grey copied to 3 channels
    assert (tmp_path / "fashion-mnist" / ".nsa-cache" / "test.pt").is_file()


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "fashion-mnist"])
def test_missing_data_without_download(tmp_path, name):
    with pytest.raises(data.DataMissing) as err:
        data.load(name, "test", data_dir=tmp_path, download=False)
    _check_missing_message(err.value, name, tmp_path)


@pytest.mark.parametrize("name", ["cifar10", "fashion-mnist"])
def test_missing_data_offline_download(tmp_path, monkeypatch, name):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)  # what torchvision fetches with
    with pytest.raises(data.DataMissing) as err:
        data.load(name, "test", data_dir=tmp_path, download=True)
    _check_missing_message(err.value, name, tmp_path)
    assert "download failed" in str(err.value)


def _check_missing_message(err: data.DataMissing, name: str, root: Path) -> None:
    msg = str(err)
    assert "\n" not in msg
    for needed in [repr(name), str(root), "download=True", "ImageFolder",
                   f"{root}/{name}/{{train,test}}/<class>/*"]:
        assert needed in msg, needed
    if name == "fashion-mnist":
        assert "t10k-*-idx*-ubyte.gz" in msg and "FashionMNIST/raw" in msg
    assert err.__cause__ is None and err.__suppress_context__  # no deep traceback chained


def test_bad_name_or_split():
    with pytest.raises(ValueError, match="cifar100.*svhn.*fashion-mnist.*synthetic"):
        data.load("imagenet")
    with pytest.raises(ValueError, match="split"):
        data.load("synthetic", "valid")


def test_resolve_data_dir(tmp_path, monkeypatch):
    """One rule for every folder: relative paths resolve against the repository root, from
    whichever working directory."""
    from nsa_core.paths import repo_root
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NSA_DATA_DIR", raising=False)
    assert data.resolve_data_dir() == repo_root() / "data"
    monkeypatch.setenv("NSA_DATA_DIR", str(tmp_path / "env"))
    assert data.resolve_data_dir() == tmp_path / "env"
    monkeypatch.setenv("NSA_DATA_DIR", "rel")
    assert data.resolve_data_dir() == repo_root() / "rel"
    assert data.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"


# ----------------------------------------------------------------------------- synthetic

def test_synthetic_is_seeded_and_in_memory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng_state = torch.get_rng_state()
    a = data.load("synthetic", "train", seed=1)
    assert torch.equal(torch.get_rng_state(), rng_state)  # global RNG untouched
    assert not list(tmp_path.iterdir())  # nothing written
    assert a.images.shape == (2048, 3, 32, 32) and a.images.dtype == torch.uint8
    assert a.labels.dtype == torch.int64 and len(a.classes) == 10 == data.NUM_CLASSES["synthetic"]
    assert torch.bincount(a.labels, minlength=10).min() >= 2048 // 10
    b = data.load("synthetic", "train", seed=1)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, data.load("synthetic", "train", seed=2).images)
    test = data.load("synthetic", "test", seed=1)
    assert len(test) == 512 and not torch.equal(test.images, a.images[:512])
    assert len(data.load("synthetic", "test", synthetic_size=100)) == 100


def _nearest_centroid_accuracy(train: torch.Tensor, y_train, test: torch.Tensor, y_test):
    centroids = torch.stack([train[y_train == c].mean(0) for c in range(10)])
    return (torch.cdist(test, centroids).argmin(1) == y_test).float().mean().item()


def test_synthetic_shares_templates_but_one_pixel_is_not_enough():
    train, test = data.load("synthetic", "train", seed=3), data.load("synthetic", "test", seed=3)
    x_tr, x_te = data.to_unit(train.images), data.to_unit(test.images)
    whole = _nearest_centroid_accuracy(x_tr.flatten(1), train.labels, x_te.flatten(1), test.labels)
    pixel = _nearest_centroid_accuracy(x_tr[:, :, 16, 16], train.labels, x_te[:, :, 16, 16],
                                       test.labels)
    assert whole > 0.9  # test comes from the train templates: learnable
    assert pixel < 0.8  # shifts and noise: no single pixel gives the class away
    other = data.load("synthetic", "test", seed=4)
    x_other = data.to_unit(other.images).flatten(1)
    assert _nearest_centroid_accuracy(x_tr.flatten(1), train.labels, x_other, other.labels) < 0.5


# ----------------------------------------------------------------------------- subsets

def _uneven_labels(n: int = 3000, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(seed))


def test_balanced_subset():
    labels = _uneven_labels()
    idx = data.balanced_subset(labels, 200, seed=0)
    assert len(idx.unique()) == 200 and torch.equal(idx, idx.sort().values)
    assert torch.bincount(labels[idx], minlength=10).tolist() == [20] * 10
    assert torch.equal(idx, data.balanced_subset(labels, 200, seed=0))
    assert not torch.equal(idx, data.balanced_subset(labels, 200, seed=1))
    with pytest.raises(ValueError, match="divisible"):
        data.balanced_subset(labels, 205)
    too_many = 10 * (torch.bincount(labels).min().item() + 1)
    with pytest.raises(ValueError, match="fewer"):
        data.balanced_subset(labels, too_many)


def test_eval_order():
    order = data.eval_order(1000, seed=0)
    assert torch.equal(order.sort().values, torch.arange(1000))
    assert torch.equal(order, data.eval_order(1000, seed=0))
    assert not torch.equal(order, data.eval_order(1000, seed=1))
    assert not torch.equal(order, torch.arange(1000))


def test_split_subset():
    split = data.load("synthetic", "test", synthetic_size=50)
    sub = split.subset(torch.tensor([3, 1]))
    assert len(sub) == 2 and sub.name == "synthetic" and sub.classes == split.classes
    assert torch.equal(sub.images[0], split.images[3]) and sub.labels[1] == split.labels[1]


# ----------------------------------------------------------------------------- transforms

def _position_pattern(b: int) -> torch.Tensor:
    """Each pixel says where it is: channel 0 = 10 + 4 row, channel 1 = 10 + 4 col."""
    pos = 10 + 4 * torch.arange(32, dtype=torch.uint8)
    x = torch.empty(b, 3, 32, 32, dtype=torch.uint8)
    x[:, 0], x[:, 1], x[:, 2] = pos[:, None], pos[None, :], 200
    return x


def _shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """x seen through a 32x32 window at offset (dy, dx) of its 4-pixel zero padding."""
    return torch.nn.functional.pad(x, (4, 4, 4, 4))[..., dy:dy + 32, dx:dx + 32]


def test_augment_shape_dtype_determinism():
    x = data.load("synthetic", "test", synthetic_size=64).images
    rng_state = torch.get_rng_state()
    out = data.augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert out.shape == x.shape and out.dtype == torch.uint8 and out.device == x.device
    assert torch.equal(out, data.augment(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, data.augment(x, torch.Generator().manual_seed(1)))
    g = torch.Generator().manual_seed(0)
    assert not torch.equal(data.augment(x, g), data.augment(x, g))  # the stream moves on
    as_float = data.augment(data.to_unit(x), torch.Generator().manual_seed(0))
    assert as_float.dtype == torch.float32
    assert torch.allclose(as_float, data.to_unit(out))


def test_augment_crop_shifts_content():
    x = _position_pattern(256)
    out = data.augment(x, torch.Generator().manual_seed(0), cutout=0, flip=False)
    offsets = set()
    for img in out:
        match = [(dy, dx) for dy in range(9) for dx in range(9)
                 if torch.equal(img, _shifted(x[0], dy, dx))]
        assert len(match) == 1
        offsets |= set(match)
    assert len(offsets) > 40  # offsets spread over the 81 possible ones
    assert torch.equal(data.augment(x, torch.Generator(), pad=0, cutout=0, flip=False), x)


def test_augment_flips_about_half():
    x = _position_pattern(400)
    out = data.augment(x, torch.Generator().manual_seed(0), cutout=0, pad=0)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert (flipped ^ same).all()
    assert 0.4 < flipped.float().mean() < 0.6


def test_augment_cutout_hole():
    x = torch.full((500, 3, 32, 32), 255, dtype=torch.uint8)
    out = data.augment(x, torch.Generator().manual_seed(0), pad=0, flip=False)
    hole = out[:, 0] == 0
    assert torch.equal(hole[:, None].expand(-1, 3, -1, -1), out == 0)  # all channels
    area = hole.flatten(1).sum(1)
    assert (area > 0).all() and (area <= 16 * 16).all()
    assert (area == 256).float().mean() > 0.2  # whole holes when the centre is inside
    assert (area < 256).float().mean() > 0.2  # clipped at the borders otherwise
    # each hole is one axis-aligned rectangle: the outer product of its row and column spans
    rows, cols = hole.any(2), hole.any(1)
    assert torch.equal(hole, rows[:, :, None] & cols[:, None, :])
    assert ((rows.sum(1) >= 8) & (cols.sum(1) >= 8)).all()  # centre is on the image


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_augment_on_cuda_matches_shape():
    x = data.load("synthetic", "test", synthetic_size=64).images.cuda()
    out = data.augment(x, torch.Generator("cuda").manual_seed(0))
    assert out.device == x.device and out.shape == x.shape
    assert torch.equal(out, data.augment(x, torch.Generator("cuda").manual_seed(0)))


def test_normalize_and_to_unit():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    unit = data.to_unit(x)
    assert unit.dtype == torch.float32 and 0 <= unit.min() and unit.max() <= 1
    a, b = data.normalize(x, "cifar10"), data.normalize(unit, "cifar10")
    assert a.dtype == torch.float32 and torch.allclose(a, b)
    mean = torch.tensor(data.MEAN["cifar10"]).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    assert data.normalize(mean, "cifar10").abs().max() < 1e-6
    one = torch.ones(1, 3, 1, 1)
    expected = (1 - torch.tensor(data.MEAN["svhn"])) / torch.tensor(data.STD["svhn"])
    assert torch.allclose(data.normalize(one, "svhn").flatten(), expected)
    assert set(data.MEAN) == set(data.STD) == set(data.NUM_CLASSES) == set(data.DATASETS)
