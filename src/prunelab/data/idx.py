"""MNIST and Fashion-MNIST from the official IDX files (raw or ``.gz``).

IDX format (LeCun et al., 1998, http://yann.lecun.com/exdb/mnist/): two zero bytes, a type code
(0x08 = unsigned byte, ...), the number of dimensions, then each dimension as a big-endian uint32,
then the values big-endian, row-major. Images are ``idx3`` (N, 28, 28), labels ``idx1`` (N,).

Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017, arXiv:1708.07747) uses the same file names and format.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunelab.data.dataset import DATASETS, RawSplits
from prunelab.data.files import Checksum, digest, fetch, first_existing, not_found, read_bytes, verify
from prunelab.errors import PrunelabError

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _sha(hexdigest: str) -> Checksum:
    return Checksum("sha256", hexdigest)


@dataclass(frozen=True)
class IdxSpec:
    """Where an IDX dataset's four files live, what they must contain, where to download them."""

    title: str
    files: dict[str, str]  # role -> official file name (decompressed)
    checksums: dict[str, Checksum | None]  # file name -> digest of the decompressed content
    n_train: int
    n_test: int
    image_shape: tuple[int, int]
    subdirs: tuple[str, ...]  # searched under the data root, in order; "" is the root itself
    mirrors: tuple[str, ...]  # base URLs serving "<file>.gz"
    download_md5: dict[str, str] | None  # file name -> MD5 of the official .gz as served
    class_names: tuple[str, ...]


_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# SHA-256 of the decompressed official IDX files (the content, the same for every copy of MNIST).
MNIST_SHA256 = {
    "train-images-idx3-ubyte": _sha("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train-labels-idx1-ubyte": _sha("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "t10k-images-idx3-ubyte": _sha("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "t10k-labels-idx1-ubyte": _sha("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}

IDX_SPECS: dict[str, IdxSpec] = {
    "mnist": IdxSpec(
        title="MNIST",
        files=_FILES,
        checksums=MNIST_SHA256,
        n_train=60000,
        n_test=10000,
        image_shape=(28, 28),
        subdirs=("mnist", "MNIST/raw", ""),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        download_md5=None,  # the decompressed content is checked with SHA-256 instead
        class_names=tuple(str(d) for d in range(10)),
    ),
    # Fashion-MNIST publishes only the MD5 of its .gz files; no digest of the decompressed content
    # is published, so loading checks the structure strictly (magic, dims, counts, label range)
    # and refuses MNIST content, and a download is checked against the .gz MD5s.
    "fashion_mnist": IdxSpec(
        title="Fashion-MNIST",
        files=_FILES,
        checksums={name: None for name in _FILES.values()},
        n_train=60000,
        n_test=10000,
        image_shape=(28, 28),
        subdirs=("fashion_mnist", "fashion-mnist", "FashionMNIST/raw", ""),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        download_md5={
            "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        class_names=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
    ),
}


def parse_idx(data: bytes, origin: str = "IDX data") -> np.ndarray:
    """The array stored in IDX bytes ``data`` (a read-only view; ``origin`` names it in errors)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES or data[3] == 0:
        raise PrunelabError(
            f"{origin} is not an IDX file: magic bytes {data[:4].hex() or 'missing'}, expected "
            f"0000 + a type code ({', '.join(f'{t:02x}' for t in IDX_TYPES)}) + a dimension count >= 1"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise PrunelabError(f"{origin} is truncated: {len(data)} bytes, the header alone needs {header}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_TYPES[data[2]])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "too long"
        raise PrunelabError(
            f"{origin} is {what}: header says shape {dims} ({expected} bytes in all), "
            f"the file has {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def read_idx(path: str | os.PathLike, checksum: Checksum | None = None) -> np.ndarray:
    """Read one IDX file (raw or ``.gz``), verifying ``checksum`` of its decompressed content."""
    data = read_bytes(path)
    array = parse_idx(data, f"file {str(path)!r}")
    verify(data, checksum, f"file {str(path)!r}")
    return array


def _locate(spec: IdxSpec, root: Path) -> dict[str, Path] | None:
    """The first searched folder holding all four files (each raw or .gz, raw preferred)."""
    for sub in spec.subdirs:
        folder = root / sub
        found = {}
        for name in spec.files.values():
            path = first_existing([folder / name, folder / f"{name}.gz"])
            if path is None:
                break
            found[name] = path
        else:
            return found
    return None


def load_idx_dataset(spec: IdxSpec, root: Path, download: bool) -> RawSplits:
    """Find (or download) the four files of ``spec``, check them, return the raw uint8 arrays."""
    found = _locate(spec, root)
    if found is None:
        looked_for = (
            ", ".join(f"{name}[.gz]" for name in spec.files.values())
            + " in each of "
            + ", ".join(str(root / sub) for sub in spec.subdirs)
        )
        urls = list(spec.mirrors)
        if not download:
            raise not_found(spec.title, looked_for, root, urls, "download=False")
        target = root / spec.subdirs[0]
        for name in spec.files.values():
            if first_existing([target / name, target / f"{name}.gz"]) is None:
                md5 = None if spec.download_md5 is None else spec.download_md5[name]
                try:
                    fetch([m + f"{name}.gz" for m in spec.mirrors], target / f"{name}.gz", md5)
                except PrunelabError as e:
                    raise not_found(spec.title, looked_for, root, urls, str(e)) from None
        found = _locate(spec, root)
        assert found is not None
    arrays = {role: _read_checked(spec, found[name]) for role, name in spec.files.items()}
    x_train, y_train = _pair(spec, arrays, "train", spec.n_train)
    x_test, y_test = _pair(spec, arrays, "test", spec.n_test)
    return RawSplits(
        x_train=x_train[:, None],
        y_train=y_train,
        x_test=x_test[:, None],
        y_test=y_test,
        num_classes=len(spec.class_names),
        class_names=list(spec.class_names),
        scale=255.0,
    )


def _read_checked(spec: IdxSpec, path: Path) -> np.ndarray:
    name = path.name.removesuffix(".gz")
    data = read_bytes(path)
    origin = f"{spec.title} file {str(path)!r}"
    array = parse_idx(data, origin)
    if array.dtype != np.uint8:
        raise PrunelabError(f"{origin} holds {array.dtype} values, expected unsigned bytes (type 0x08)")
    verify(data, spec.checksums[name], origin)
    if spec.checksums[name] is None:
        # No published digest: at least refuse MNIST content under another dataset's name.
        actual = digest(data)
        if any(c.hexdigest == actual for c in MNIST_SHA256.values()):
            raise PrunelabError(f"{origin} is the MNIST file {name}, not {spec.title}")
    return array


def _pair(spec: IdxSpec, arrays: dict[str, np.ndarray], split: str, count: int):
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    image_file, label_file = spec.files[f"{split}_images"], spec.files[f"{split}_labels"]
    if images.shape != (count, *spec.image_shape):
        raise PrunelabError(
            f"{spec.title} {image_file} has shape {images.shape}, expected {(count, *spec.image_shape)}"
        )
    if labels.shape != (count,):
        raise PrunelabError(f"{spec.title} {label_file} has shape {labels.shape}, expected ({count},)")
    if labels.max() >= len(spec.class_names):
        raise PrunelabError(
            f"{spec.title} {label_file} has label {int(labels.max())}, "
            f"expected labels 0..{len(spec.class_names) - 1}"
        )
    return images, labels


@DATASETS.register("mnist")
def mnist(root: Path, download: bool) -> RawSplits:
    """MNIST (LeCun et al., 1998): 60k/10k 28x28 grey handwritten digits, input (1, 28, 28)."""
    return load_idx_dataset(IDX_SPECS["mnist"], root, download)


@DATASETS.register("fashion_mnist")
def fashion_mnist(root: Path, download: bool) -> RawSplits:
    """Fashion-MNIST (Xiao et al., 2017): 60k/10k 28x28 grey clothing images, input (1, 28, 28)."""
    return load_idx_dataset(IDX_SPECS["fashion_mnist"], root, download)
