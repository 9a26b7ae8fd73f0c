"""Calibration from image folders (Pillow) gives exactly the arrays of the equivalent .npz;
bad folders and options are one-line errors; decoding holds one image at a time."""
import sys
from pathlib import Path

import numpy as np
import pytest

from calib_util import MNIST_SPECS, arrays, one_line
from onnxprune import prune
from onnxprune.errors import OnnxPruneError
from onnxprune.io import npyfile
from onnxprune.io.calib import InputSpec, input_specs, load_calibration
from onnxprune.io.sources import SourceCalibration, images_calibration

Image = pytest.importorskip("PIL.Image")





# --- images ---------------------------------------------------------------------------------

def write_gray_pngs(folder: Path, n: int, seed: int = 0) -> list:
    """n random 28x28 grayscale PNGs in nested folders; returns their pixels in sorted path order."""
    rng = np.random.default_rng(seed)
    written = {}
    for i in range(n):
        pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
        path = folder / f"class{i % 3}" / f"img{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, "L").save(path)
        written[path.as_posix()] = pixels
    return [written[k] for k in sorted(written)]


def test_a_png_folder_gives_the_arrays_of_the_equivalent_npz(tmp_path):
    pixels = write_gray_pngs(tmp_path / "imgs", 12)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    (tmp_path / "imgs" / "class1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "imgs" / ".hidden.png").write_bytes(b"ignored, not counted")
    expected = np.stack(pixels).astype(np.float32)[:, None] / 255
    np.savez(tmp_path / "same.npz", input=expected)

    calib = images_calibration(tmp_path / "imgs", MNIST_SPECS, None, preset="0-1")
    assert isinstance(calib, SourceCalibration) and calib.samples == 12
    assert calib.skipped == 2 and any("broken.png" in f for f in calib.skipped_files)
    assert calib.info["layout"] == "NCHW" and calib.info["size"] == [28, 28]
    got = arrays(calib)["input"]
    assert got.dtype == np.float32 and got.shape == (12, 1, 28, 28)
    np.testing.assert_allclose(got, np.asarray(load_calibration(tmp_path / "same.npz", MNIST_SPECS, None)
                                               .arrays["input"]), rtol=0, atol=1e-7)
    assert arrays(calib.head(5))["input"].shape == (5, 1, 28, 28)
    # --samples takes the first files in sorted order; a glob works like the folder
    five = images_calibration(str(tmp_path / "imgs" / "**" / "*.png"), MNIST_SPECS, 5, preset="0-255")
    np.testing.assert_array_equal(arrays(five)["input"], np.stack(pixels[:5]).astype(np.float32)[:, None])


def _resized(im, size, resize):
    """The test's own resize: Pillow bilinear, then a centre crop (torchvision's arithmetic)."""
    h, w = size
    if resize == "exact":
        return np.asarray(im.resize((w, h), Image.BILINEAR))
    iw, ih = im.size
    if h * iw >= w * ih:
        nw, nh = max(w, int(h * iw / ih)), h
    else:
        nw, nh = w, max(h, int(w * ih / iw))
    big = np.asarray(im.resize((nw, nh), Image.BILINEAR))
    top, left = int(round((nh - h) / 2)), int(round((nw - w) / 2))
    return big[top:top + h, left:left + w]


@pytest.mark.parametrize("preset, order, layout, resize", [
    ("imagenet", "RGB", "NCHW", "shorter"),
    ("imagenet", "BGR", "NHWC", "shorter"),
    ("0-1", "RGB", "NHWC", "exact"),
    ("0-255", "BGR", "NCHW", "exact"),
    ("-1-1", "RGB", "NCHW", "shorter"),
])
def test_rgb_images_are_resized_scaled_and_laid_out_like_numpy(tmp_path, preset, order, layout, resize):
    rng = np.random.default_rng(1)
    raw = [rng.integers(0, 256, (20 + 3 * i, 24 + 5 * i, 3), dtype=np.uint8) for i in range(4)]
    for i, a in enumerate(raw):
        Image.fromarray(a, "RGB").save(tmp_path / f"{i}.png")
    dims = (None, 3, 16, 12) if layout == "NCHW" else (None, 16, 12, 3)
    specs = [InputSpec("image", np.dtype(np.float32), dims)]
    calib = images_calibration(tmp_path, specs, 4, preset=preset, channel_order=order, resize=resize)

    x = np.stack([_resized(Image.fromarray(a), (16, 12), resize) for a in raw]).astype(np.float64)
    if order == "BGR":
        x = x[..., ::-1]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    if order == "BGR":
        mean, std = mean[::-1], std[::-1]
    x = {"imagenet": (x / 255 - mean) / std, "0-1": x / 255, "0-255": x, "-1-1": x / 127.5 - 1}[preset]
    if layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    np.testing.assert_allclose(arrays(calib)["image"], x.astype(np.float32), rtol=1e-6, atol=1e-6)


def test_explicit_size_mean_and_std_and_a_dynamic_input(tmp_path):
    a = np.random.default_rng(2).integers(0, 256, (10, 10, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "x.webp", lossless=True)
    specs = [InputSpec("x", np.dtype(np.float32), (None, 3, None, None))]
    with pytest.raises(OnnxPruneError, match="no fixed height and width") as e:
        images_calibration(tmp_path, specs, None)
    one_line(e)
    calib = images_calibration(tmp_path, specs, None, size=10, preset="0-255", mean=(1, 2, 3), std=2)
    want = (a.astype(np.float64) - [1, 2, 3]) / 2
    np.testing.assert_allclose(arrays(calib)["x"][0], want.transpose(2, 0, 1), atol=1e-5)
    half = images_calibration(tmp_path, specs, None, size=(10, 10), mean=0.5)     # ImageNet std kept
    want = (a / 255 - 0.5) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(arrays(half)["x"][0], want.transpose(2, 0, 1), atol=1e-5)


def test_strict_refuses_what_is_otherwise_skipped(tmp_path):
    write_gray_pngs(tmp_path, 3)
    (tmp_path / "zz.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    assert images_calibration(tmp_path, MNIST_SPECS, None, preset="0-1").skipped == 1
    with pytest.raises(OnnxPruneError, match="zz.jpg is not a readable image") as e:
        images_calibration(tmp_path, MNIST_SPECS, None, preset="0-1", strict=True)
    one_line(e)


@pytest.mark.parametrize("case, match", [
    ("missing", "image folder not found"),
    ("empty", "the folder is empty"),
    ("no_images", "no readable images"),
    ("glob", "no files match"),
    ("too_few", "has 3 readable images .1 file.s. skipped., fewer than --samples 10"),
    ("imagenet_gray", "imagenet preset has a mean and std for 3 colour channels"),
    ("two_inputs", "one image input; this model has 2 inputs"),
    ("not_image", "needs a 4-D float input"),
    ("size_clash", "fixed image size 28x28; the image size 32x32 disagrees"),
    ("bad_preset", "unknown preset 'caffe'"),
    ("no_layout", "cannot tell whether input 'input'"),
    ("bad_mean", "mean has 2 values; the input has 1 channel"),
])
def test_bad_image_inputs_are_one_line_errors(tmp_path, case, match):
    folder = tmp_path / "imgs"
    folder.mkdir()
    specs, kwargs, target = MNIST_SPECS, {"preset": "0-1"}, folder
    if case == "missing":
        target = tmp_path / "nope"
    elif case == "no_images":
        (folder / "a.txt").write_text("x")
    elif case == "glob":
        target = str(folder / "*.png")
    elif case != "empty":
        write_gray_pngs(folder, 3)
        (folder / "junk.png").write_text("x")
    if case == "imagenet_gray":
        kwargs = {}
    elif case == "two_inputs":
        specs = MNIST_SPECS + [InputSpec("scale", np.dtype(np.float32), (None, 1))]
    elif case == "not_image":
        specs = [InputSpec("ids", np.dtype(np.int64), (None, 16))]
    elif case == "size_clash":
        kwargs["size"] = 32
    elif case == "bad_preset":
        kwargs["preset"] = "caffe"
    elif case == "no_layout":
        specs = [InputSpec("input", np.dtype(np.float32), (None, 5, 28, 28))]
    elif case == "bad_mean":
        kwargs["mean"] = (0.5, 0.5)
    with pytest.raises(OnnxPruneError, match=match) as e:
        images_calibration(target, specs, 10 if case == "too_few" else None, **kwargs)
    one_line(e)


def test_missing_pillow_names_the_extra(tmp_path, monkeypatch):
    write_gray_pngs(tmp_path, 2)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)        # import fails as if not installed
    with pytest.raises(OnnxPruneError, match=r'pip install "onnxprune\[images\]"') as e:
        images_calibration(tmp_path, MNIST_SPECS, None, preset="0-1")
    one_line(e)


def test_images_give_bit_identical_arrays_to_the_equivalent_npz(tmp_path):
    """Bit-identical arrays prune identically (the loader-script test below runs prune on that)."""
    pixels = write_gray_pngs(tmp_path / "imgs", 32)
    np.savez(tmp_path / "same.npz", input=np.stack(pixels).astype(np.float32)[:, None] / np.float32(255))
    calib = images_calibration(tmp_path / "imgs", MNIST_SPECS, None, preset="0-1")
    assert np.array_equal(arrays(calib)["input"], np.load(tmp_path / "same.npz")["input"])


def test_decoding_holds_one_image_at_a_time(tmp_path, monkeypatch):
    """Memory does not grow with the number of images: each is written to disk when decoded
    (the value checks then read the file back in chunks of SCAN_BYTES, made small here)."""
    import tracemalloc

    rng = np.random.default_rng(3)
    for i in range(150):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"{i:03d}.png")
    specs = [InputSpec("x", np.dtype(np.float32), (None, 3, 64, 64))]
    one_image = 3 * 64 * 64 * 4
    monkeypatch.setattr(npyfile, "SCAN_BYTES", 2 * one_image)
    tracemalloc.start()
    try:
        calib = images_calibration(tmp_path, specs, None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert calib.samples == 150
    assert peak < 12 * one_image, f"peak {peak} bytes for 150 images of {one_image} bytes"


def test_prune_reads_image_rows_a_batch_at_a_time(tmp_path, monkeypatch):
    """In the style of test_robust_memory: the decoded images are read back one batch at a time."""
    import builders as B
    from onnxprune.io.npyfile import StoredArray

    rng = np.random.default_rng(4)
    for i in range(70):
        Image.fromarray(rng.integers(0, 256, (8 + i % 5, 8 + i % 3, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    model = B.cnn()
    calib = images_calibration(tmp_path, input_specs(model), None)
    monkeypatch.setattr(npyfile, "SCAN_BYTES", 16 * 3 * 8 * 8 * 4)
    reads, original = [], StoredArray.read

    def counting(self):
        reads.append(len(self))
        return original(self)
    monkeypatch.setattr(StoredArray, "read", counting)
    _, report = prune(model, calib, keep=0.5, batch_size=16)
    assert report.calibration["samples"] == 70
    assert reads and max(reads) <= 16 and sum(reads) >= 2 * 70      # the check scan and capture, in batches


def test_jpeg_and_webp_decode_like_pillow(tmp_path):
    rng = np.random.default_rng(6)
    a = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.jpg", quality=90)
    Image.fromarray(a).save(tmp_path / "b.webp", quality=90)
    specs = [InputSpec("x", np.dtype(np.float32), (None, 12, 12, 3))]
    calib = images_calibration(tmp_path, specs, None, preset="0-255")
    want = np.stack([np.asarray(Image.open(tmp_path / n).convert("RGB")) for n in ("a.jpg", "b.webp")])
    np.testing.assert_array_equal(arrays(calib)["x"], want.astype(np.float32))
    assert calib.skipped == 0 and calib.info["layout"] == "NHWC"


def test_too_little_temporary_space_is_said_before_decoding(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    write_gray_pngs(tmp_path, 3)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(OnnxPruneError, match="3 decoded samples of images need 9.2 KiB in .*which has 1000 bytes free; .*point TMPDIR") as e:
        images_calibration(tmp_path, MNIST_SPECS, None, preset="0-1")
    one_line(e)
