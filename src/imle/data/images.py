"""Image sources: photo patches, LFW faces, and generic .npy/.npz files and image folders."""

from __future__ import annotations

import functools
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from imle.errors import DataError

from .base import DataSplit, check_split, file_key, uint8_to_float, validate_images

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PHOTO_HOLDOUT = ("chelsea.png", "rocket.jpg")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _open_image(path: Path) -> Image.Image:
    im = None
    try:
        im = Image.open(path)
        im.load()  # decode now so a truncated file fails here, with its name
        return im
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if im is not None:
            im.close()
        raise DataError(
            f"{path}: cannot read image ({type(e).__name__}: {e}); replace or remove the file"
        ) from e


def _to_array(im: Image.Image, mode: str) -> np.ndarray:
    """uint8 (H, W) for mode "L" or (H, W, 3) for "RGB"."""
    if mode == "L" and im.mode.startswith("I;16"):
        # PIL's convert("L") clips 16-bit values instead of scaling them.
        arr = np.asarray(im, dtype=np.float64) / 65535.0
        return np.round(arr * 255.0).astype(np.uint8)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Drop alpha the way viewers show it: over a white background.
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return np.asarray(im.convert(mode), dtype=np.uint8)


@functools.lru_cache(maxsize=32)
def _read_photo_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    del mtime_ns, size  # only part of the cache key
    with _open_image(Path(path)) as im:
        arr = _to_array(im, "RGB")
    arr.flags.writeable = False
    return arr


def _patches(img: np.ndarray, patch_size: int, stride: int) -> np.ndarray:
    """(n, 3, P, P) uint8 patches of an (H, W, 3) image, row-major over patch positions."""
    h, w = img.shape[:2]
    if h < patch_size or w < patch_size:
        return np.zeros((0, 3, patch_size, patch_size), np.uint8)
    win = np.lib.stride_tricks.sliding_window_view(img, (patch_size, patch_size), axis=(0, 1))
    # win: (H-P+1, W-P+1, 3, P, P), already channel-first inside each window
    return np.ascontiguousarray(win[::stride, ::stride]).reshape(-1, 3, patch_size, patch_size)


def load_photos(
    split: str,
    data_dir: Path,
    download: bool,
    *,
    patch_size: int = 32,
    stride: int = 8,
    holdout: Sequence[str] = PHOTO_HOLDOUT,
) -> DataSplit:
    """Cut the photographs in ``data_dir/photos`` into square colour patches.

    Photos are taken in filename order and patches in row-major order of their top-left corner,
    so the result is deterministic. With the defaults the seven shipped photos give 33,389
    patches (27,737 train, 5,652 test).

    Args:
        split: "train" (photos not held out), "test" (held-out photos) or "all".
        data_dir: root data folder.
        download: unused; the photos are not downloadable.
        patch_size: side P of the patches.
        stride: step between patch corners, in pixels.
        holdout: file names (or stems) of the photos that make up the test split.

    Returns:
        DataSplit with x (N, 3, P, P) float32 in [0, 1] and labels (N,) int64 holding the index
        of each patch's photo in the sorted file list.
    """
    del download
    check_split(split, ("train", "test", "all"), "photos")
    if patch_size < 1 or stride < 1:
        raise DataError(f"photos: patch_size and stride must be >= 1, got {patch_size}, {stride}")
    folder = data_dir / "photos"
    if not folder.is_dir():
        raise DataError(
            f"photos folder not found: {folder}; set --data-dir / IMLE_DATA_DIR to a folder that "
            "contains photos/"
        )
    files = _image_files(folder)
    if not files:
        raise DataError(f"{folder}: no PNG/JPEG photos found")
    holdout = [holdout] if isinstance(holdout, str) else list(holdout)
    known = {p.name for p in files} | {p.stem for p in files}
    unknown = [h for h in holdout if h not in known]
    if unknown:
        raise DataError(
            f"photos: held-out photo(s) {unknown} not in {folder}; available: "
            f"{', '.join(p.name for p in files)}"
        )
    held = set(holdout)
    chunks, labels = [], []
    for idx, path in enumerate(files):
        is_test = path.name in held or path.stem in held
        if split == "train" and is_test or split == "test" and not is_test:
            continue
        p = _patches(_read_photo_cached(*file_key(path)), patch_size, stride)
        chunks.append(p)
        labels.append(np.full(len(p), idx, np.int64))
    x = np.concatenate(chunks) if chunks else np.zeros((0, 3, patch_size, patch_size), np.uint8)
    if len(x) == 0:
        raise DataError(
            f"photos: split {split!r} has no patches (patch_size={patch_size} larger than the "
            "photos, or every photo held out)"
        )
    return DataSplit(
        x=uint8_to_float(x),
        labels=torch.from_numpy(np.concatenate(labels)),
        name="photos",
        split=split,
    )


def load_lfw_faces(split: str, data_dir: Path, download: bool) -> DataSplit:
    """The 100 face crops of ``data_dir/lfw-subset/lfw_subset.npy`` (rows 0-99), for few-shot runs.

    Args:
        split: "train" (or "all"; the same 100 faces).
        data_dir: root data folder.
        download: unused; the file ships with scikit-image, copy it there.

    Returns:
        DataSplit with x (100, 1, 25, 25) float32 in [0, 1] and labels None.
    """
    del download
    check_split(split, ("train", "all"), "lfw-faces")
    path = data_dir / "lfw-subset" / "lfw_subset.npy"
    if not path.is_file():
        raise DataError(
            f"LFW subset not found: {path}; copy scikit-image's data/lfw_subset.npy there, or set "
            "--data-dir / IMLE_DATA_DIR to a folder that contains lfw-subset/"
        )
    arr = _load_npy(path)
    if arr.ndim != 3 or arr.shape[0] < 100:
        raise DataError(f"{path}: expected (200, 25, 25) crops, got {arr.shape}; check the file")
    x = _array_to_images(arr[:100], str(path))
    return DataSplit(x=x, labels=None, name="lfw-faces", split=split)


def _load_npy(path: Path) -> np.ndarray:
    try:
        # allow_pickle=False: an .npy/.npz with object arrays could run code on load.
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read array file ({e}); check the file") from e


def _array_to_images(arr: np.ndarray, what: str) -> torch.Tensor:
    """Convert an image array to (N, C, H, W) float32 in [0, 1].

    Accepts (N, H, W), (N, C, H, W) and (N, H, W, C) with C in {1, 3}; uint8 is divided by 255,
    bool maps to {0, 1}, floats must already lie in [0, 1].
    """
    if arr.size == 0:
        raise DataError(f"{what}: empty array of shape {arr.shape}")
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4:
        if arr.shape[1] not in (1, 3):
            if arr.shape[3] in (1, 3):
                arr = arr.transpose(0, 3, 1, 2)
            else:
                raise DataError(
                    f"{what}: shape {arr.shape} has no channel axis of size 1 or 3; expected "
                    "(N, H, W), (N, C, H, W) or (N, H, W, C) with C in {1, 3}"
                )
    else:
        raise DataError(
            f"{what}: expected images of shape (N, H, W), (N, C, H, W) or (N, H, W, C), got "
            f"{arr.ndim}-D shape {arr.shape}"
        )
    if arr.dtype == np.uint8:
        x = uint8_to_float(np.ascontiguousarray(arr))
    elif arr.dtype == np.bool_:
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    elif np.issubdtype(arr.dtype, np.floating):
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    else:
        raise DataError(
            f"{what}: unsupported dtype {arr.dtype}; store images as uint8 (0-255) or as floats "
            "in [0, 1]"
        )
    validate_images(x, what)
    return x


def load_array_file(path: Path, split: str) -> DataSplit:
    """Load images from a ``.npy`` or ``.npz`` file.

    An ``.npz`` must hold the images under "x" or "images", or hold a single array; integer
    labels under "labels" or "y" are returned when present.

    Args:
        path: the file.
        split: "train" or "all" (a single array has no other splits).

    Returns:
        DataSplit with x (N, C, H, W) float32 in [0, 1].
    """
    check_split(split, ("train", "all"), f"array file {path}")
    labels = None
    if path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.files)
                key = next((k for k in ("x", "images") if k in keys), None)
                if key is None and len(keys) == 1:
                    key = keys[0]
                if key is None:
                    raise DataError(
                        f"{path}: cannot tell which array holds the images (keys: {keys}); "
                        "name it 'x' or 'images'"
                    )
                arr = z[key]
                lab_key = next((k for k in ("labels", "y") if k in keys and k != key), None)
                lab = z[lab_key] if lab_key else None
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise DataError(f"{path}: cannot read .npz file ({e}); check the file") from e
        if lab is not None:
            if lab.shape != (arr.shape[0],) or not np.issubdtype(lab.dtype, np.integer):
                raise DataError(
                    f"{path}: labels must be {arr.shape[0]} integers, got {lab.dtype} {lab.shape}"
                )
            labels = torch.from_numpy(lab.astype(np.int64))
    else:
        arr = _load_npy(path)
    x = _array_to_images(arr, str(path))
    return DataSplit(x=x, labels=labels, name=str(path), split=split)


def load_image_folder(folder: Path, split: str, *, mode: str | None = None) -> DataSplit:
    """Load every PNG/JPEG image directly inside ``folder``, sorted by file name.

    All images are converted to the same mode: "L" if every image is grayscale, else "RGB"
    (transparency is composited over white).

    Args:
        folder: the folder; sub-folders are ignored.
        split: "train" or "all".
        mode: force "L" or "RGB" instead of detecting it.

    Returns:
        DataSplit with x (N, C, H, W) float32 in [0, 1], C = 1 for "L" and 3 for "RGB".

    Raises:
        DataError: if the folder has no images, an image is unreadable, or sizes differ.
    """
    check_split(split, ("train", "all"), f"image folder {folder}")
    if mode not in (None, "L", "RGB"):
        raise DataError(f"image folder: mode must be 'L' or 'RGB', got {mode!r}")
    files = _image_files(folder)
    if not files:
        raise DataError(
            f"{folder}: no images found (looked for {', '.join(IMAGE_SUFFIXES)} files directly "
            "inside the folder)"
        )
    # First pass reads only headers (cheap), so size and mode are known before decoding.
    sizes, modes = [], []
    for p in files:
        try:
            with Image.open(p) as im:
                sizes.append(im.size)
                modes.append(im.mode)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise DataError(
                f"{p}: cannot read image ({type(e).__name__}: {e}); replace or remove the file"
            ) from e
    first = sizes[0]
    bad = [i for i, s in enumerate(sizes) if s != first]
    if bad:
        i = bad[0]
        raise DataError(
            f"{folder}: images must all have the same size, but {files[0].name} is "
            f"{first[0]}x{first[1]} and {files[i].name} is {sizes[i][0]}x{sizes[i][1]} "
            f"({len(bad)} of {len(files)} differ from the first); resize or crop them first"
        )
    if mode is None:
        mode = "L" if all(m in _GRAY_MODES for m in modes) else "RGB"
    w, h = first
    arr = np.empty((len(files), h, w) if mode == "L" else (len(files), h, w, 3), np.uint8)
    for i, p in enumerate(files):
        with _open_image(p) as im:
            arr[i] = _to_array(im, mode)
    if mode == "RGB":
        arr = arr.transpose(0, 3, 1, 2)  # explicit, so that 3-pixel-high images stay unambiguous
    x = _array_to_images(arr, str(folder))
    return DataSplit(x=x, labels=None, name=str(folder), split=split)
