"""The calibration-source options of `onnxprune prune`: --calib-images, --calib-text and
--calib-script with their settings, turned into one `SourceRequest` (read once the model's
inputs are known). Exactly one source may be given; a setting of another source is an error,
so a typo is never silently ignored."""
from __future__ import annotations

import click

from ..io.sources import PRESETS, ImageFolder, LoaderScript, TextFile

IMAGE_SETTINGS = ("preprocess", "mean", "std", "image_size", "resize", "channel_order", "layout", "strict")
TEXT_SETTINGS = ("tokenizer", "max_length", "text_field", "input_map")
SOURCE_OPTIONS = ("calib_images", "calib_text", "calib_script") + IMAGE_SETTINGS + TEXT_SETTINGS
PRESET_HELP = ("imagenet: x/255, then mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) per R, G, B; "
               "0-1: x/255; 0-255: x; -1-1: x/127.5 - 1 (x the 8-bit pixel value)")


def _floats(ctx, param, value):
    if value is None:
        return None
    try:
        items = [float(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected a number or comma-separated numbers, got {value!r}") from None
    return items[0] if len(items) == 1 else tuple(items)


def _size(ctx, param, value):
    if value is None:
        return None
    try:
        items = [int(v) for v in value.split(",")]
    except ValueError:
        items = []
    if len(items) not in (1, 2) or min(items) <= 0:
        raise click.BadParameter(f"expected N or H,W (positive integers), got {value!r}")
    return items[0] if len(items) == 1 else tuple(items)


def _input_map(ctx, param, value):
    out = {}
    for item in value or ():
        name, sep, role = item.partition("=")
        if not sep or not name or not role:
            raise click.BadParameter(f"expected INPUT=ROLE, got {item!r}")
        out[name] = role
    return out or None


OPTIONS = [
    click.option("--calib-images", metavar="DIR|GLOB",
                 help="Calibration images: a folder (searched recursively) or a quoted glob of JPEG/PNG/WebP files, "
                      "sorted by path; unreadable files are skipped and counted. Needs onnxprune[images]."),
    click.option("--preprocess", type=click.Choice(PRESETS), help=f"Pixel scaling [imagenet]: {PRESET_HELP}."),
    click.option("--mean", callback=_floats, metavar="M[,M,M]",
                 help="Mean subtracted after the preset's scaling, in the model's channel order [the preset's]."),
    click.option("--std", callback=_floats, metavar="S[,S,S]", help="Std divided by after the mean [the preset's]."),
    click.option("--image-size", callback=_size, metavar="N|H,W",
                 help="Model image size [the input's static height and width]."),
    click.option("--resize", type=click.Choice(["shorter", "exact"]),
                 help="shorter: cover the size and crop the centre; exact: stretch [shorter]."),
    click.option("--channel-order", type=click.Choice(["RGB", "BGR"]), help="Channel order of the model [RGB]."),
    click.option("--layout", type=click.Choice(["NCHW", "NHWC"]),
                 help="Image input layout [from its shape: 1 or 3 channels on axis 1 is NCHW, last axis NHWC]."),
    click.option("--strict", is_flag=True, default=None, help="Refuse an unreadable image instead of skipping it."),
    click.option("--calib-text", metavar="FILE",
                 help="Calibration texts, one per line, or a .jsonl with --text-field; tokenized with --tokenizer; "
                      "the attention mask becomes the row mask. Needs onnxprune[text]."),
    click.option("--tokenizer", metavar="FILE", help="A local Hugging Face tokenizer.json (nothing is downloaded)."),
    click.option("--max-length", type=int, help="Sequence length for inputs of dynamic length [the longest text]."),
    click.option("--text-field", metavar="NAME[,NAME2]", help=".jsonl field of the text; two for pairs [text]."),
    click.option("--map", "input_map", multiple=True, callback=_input_map, metavar="INPUT=ROLE",
                 help="Feed model input INPUT with ROLE: input_ids, attention_mask or token_type_ids "
                      "(repeatable) [by input name]."),
    click.option("--calib-script", metavar="FILE.py[:FUNC]",
                 help="Your own loader: FUNC [load_data] yields dicts {input name: array}, batches or single samples."),
]


def source_options(f):
    for option in reversed(OPTIONS):
        f = option(f)
    return f


def source_request(calib, calib_random, calib_images=None, calib_text=None, calib_script=None, **settings):
    """The calibration argument of `prune` from the CLI's options (a path, a SourceRequest or None)."""
    given = [name for name, value in (("--calib", calib), ("--calib-random", calib_random),
                                      ("--calib-images", calib_images), ("--calib-text", calib_text),
                                      ("--calib-script", calib_script)) if value is not None]
    if len(given) > 1:
        raise click.UsageError(f"give one calibration source, not {' and '.join(given)}")
    image = {k: v for k, v in settings.items() if k in IMAGE_SETTINGS and v is not None}
    text = {k: v for k, v in settings.items() if k in TEXT_SETTINGS and v is not None}
    for kind, used, source in (("image", image, calib_images), ("text", text, calib_text)):
        if used and source is None:
            names = ", ".join("--" + k.replace("_", "-").replace("input-map", "map") for k in used)
            raise click.UsageError(f"{names} only {'applies' if len(used) == 1 else 'apply'} to --calib-{kind}"
                                   f"{'s' if kind == 'image' else ''}")
    if calib_images is not None:
        renamed = {"preprocess": "preset", "image_size": "size"}
        return ImageFolder(calib_images, **{renamed.get(k, k): v for k, v in image.items()})
    if calib_text is not None:
        if "tokenizer" not in text:
            raise click.UsageError("--calib-text needs --tokenizer tokenizer.json")
        tokenizer = text.pop("tokenizer")
        if "text_field" in text:
            text["field"] = text.pop("text_field")
        return TextFile(calib_text, tokenizer, **text)
    if calib_script is not None:
        return LoaderScript(calib_script)
    return calib
