"""Read a pairing code from a picture of the daemon's QR code.

The picture is a phone photo of a screen or a screenshot of a terminal, and it may
be hostile (anything can be handed to ``starmux pair --image``), so:

- only a few common formats are opened, and the pixel count is checked from the
  header before anything is decompressed (:data:`MAX_PIXELS`);
- everything the image library raises while decoding is turned into one
  :class:`~starmux.errors.PairingCodeError`;
- text read from a foreign QR code is shown only shortened and escaped.

The result is the raw text of the one starmux pairing code in the picture; the
caller parses it with :func:`starmux.pairing_code.parse_pairing_code`. QR codes
that are not starmux pairing codes (a link printed next to it, say) are ignored
when exactly one pairing code is present.

Decoder notes (zxing-cpp): it already tries rotated, inverted (light-on-dark)
and downscaled versions of the image, and its local binarizer makes contrast
stretching useless. What defeats it, found by experiment, is (1) modules under
about 1.5 pixels, which sharpening and a 2× upscale recover, and (2) terminals
that leave a gap between text rows: a thin stripe of background colour crosses
the code every two modules, and a vertical smear or a downscale plus median
removes it. Those are the fallbacks, tried only when the plain decode finds no
pairing code.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import zxingcpp
from PIL import Image, ImageFilter, UnidentifiedImageError

from starmux.errors import PairingCodeError
from starmux.pairing_code import SCHEME

#: Largest image accepted, in pixels (a 12 MP phone photo is well under it).
MAX_PIXELS = 40_000_000
#: Formats that photos and screenshots come in; the others stay closed.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
#: Longest excerpt of a foreign QR code's text put in an error message.
PREVIEW_CHARS = 60

_PAIRING_PREFIX = f"{SCHEME}://pair/"
_QR_ONLY = zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCode)
# Images up to this side are upscaled as a fallback (to at most ~4 MP).
_SMALL_SIDE = 1000
# A 5-pixel vertical box blur: smears thin horizontal stripes, keeps columns.
_VERTICAL_SMEAR = ImageFilter.Kernel((5, 5), [0, 0, 1, 0, 0] * 5, scale=5)

_RETRY_HINT = (
    "crop closer to the QR code, take the photo in better light, "
    "or paste the text code the daemon printed instead"
)
_FORMAT_HINT = "save the screenshot or photo as PNG or JPEG, or paste the text code instead"


def _escaped(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with non-printables escaped, for messages."""
    shown = "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
        for ch in text[:limit]
    )
    return shown + ("…" if len(text) > limit else "")


def _open_grayscale(path: Path, shown: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own (higher) limit; we refuse below it anyway.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path, formats=IMAGE_FORMATS)
    except FileNotFoundError as exc:
        raise PairingCodeError(f"no file at {shown}", hint="check the path") from exc
    except IsADirectoryError as exc:
        raise PairingCodeError(f"{shown} is a directory, not an image") from exc
    except PermissionError as exc:
        raise PairingCodeError(f"cannot read {shown}: permission denied") from exc
    except Image.DecompressionBombError as exc:
        raise PairingCodeError(
            f"{shown} is too large to scan (over {MAX_PIXELS // 1_000_000} megapixels)",
            hint="crop the picture around the QR code",
        ) from exc
    except UnidentifiedImageError as exc:
        raise PairingCodeError(
            f"{shown} is not an image starmux can read", hint=_FORMAT_HINT
        ) from exc
    except OSError as exc:
        raise PairingCodeError(f"cannot read {shown}: {exc.strerror or exc}") from exc
    with image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise PairingCodeError(
                f"{shown} is too large to scan ({width}×{height} pixels, "
                f"the limit is {MAX_PIXELS // 1_000_000} megapixels)",
                hint="crop the picture around the QR code",
            )
        try:
            return _flatten_to_grayscale(image)
        # Decoders for damaged or crafted files raise all sorts (OSError, ValueError,
        # SyntaxError, struct.error, EOFError, ...): at this boundary they mean one thing.
        except Exception as exc:
            raise PairingCodeError(
                f"{shown} is damaged or truncated", hint="take the screenshot or photo again"
            ) from exc


def _flatten_to_grayscale(image: Image.Image) -> Image.Image:
    if image.format == "JPEG":
        image.draft("L", image.size)  # let libjpeg skip the colour planes
    image.load()
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        # Transparent pixels often hide black: put the picture on white paper first.
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return image.convert("L")


def _attempts(gray: Image.Image) -> Iterator[Image.Image]:
    """The image, then cheap repairs for what defeats the decoder (module docstring)."""
    yield gray
    if max(gray.size) <= _SMALL_SIDE:
        sharp = gray.filter(ImageFilter.SHARPEN)
        yield sharp.resize((gray.width * 2, gray.height * 2), Image.Resampling.BICUBIC)
    yield gray.filter(_VERTICAL_SMEAR).filter(_VERTICAL_SMEAR)
    yield gray.reduce(2).filter(ImageFilter.MedianFilter(3))


def _qr_texts(image: Image.Image) -> set[str]:
    texts = set()
    for barcode in zxingcpp.read_barcodes(image, formats=_QR_ONLY):
        try:
            # The daemon writes UTF-8 without an ECI header; the raw bytes avoid
            # zxing's charset guess (which may read Shift_JIS, turning "\\" into "¥").
            texts.add(barcode.bytes.decode("utf-8"))
        except UnicodeDecodeError:
            texts.add(barcode.text)
    return texts


def decode_pairing_code_from_image(path: Path, *, prefix: str = _PAIRING_PREFIX) -> str:
    """The raw text of the one starmux pairing code QR in the image at ``path``.

    Raises :class:`PairingCodeError` when the file is missing, unreadable, not a
    supported image or too large, when it holds no QR code, several different
    pairing codes, or only QR codes that are not starmux pairing codes.
    """
    shown = _escaped(str(path), 200)
    gray = _open_grayscale(path, shown)
    foreign: set[str] = set()
    for candidate in _attempts(gray):
        texts = _qr_texts(candidate)
        codes = {text for text in texts if text.startswith(prefix)}
        foreign |= texts - codes
        if len(codes) > 1:
            raise PairingCodeError(
                f"{shown} holds {len(codes)} different starmux pairing codes",
                hint="crop the picture to the one QR code you want to pair with",
            )
        if codes:
            return codes.pop()
    hint = "scan the QR code printed by `starmux daemon start`, or paste its text code instead"
    if len(foreign) == 1:
        raise PairingCodeError(
            f"the QR code in {shown} is not a starmux pairing code "
            f'(it reads "{_escaped(foreign.pop(), PREVIEW_CHARS)}")',
            hint=hint,
        )
    if foreign:
        raise PairingCodeError(
            f"none of the {len(foreign)} QR codes in {shown} is a starmux pairing code", hint=hint
        )
    raise PairingCodeError(f"no QR code found in {shown}", hint=_RETRY_HINT)
