"""Turn a terminal QR code (the text the daemon printed) back into an image.

``starmux demo`` and the tests use this to decode what the daemon really printed
with the same decoder the controller uses on photos and screenshots, instead of
trusting the matrix that produced the text. The convention is :mod:`daemon.qr`'s: with
``invert=False`` the block characters are the *light* modules, with
``invert=True`` they are the *dark* ones.
"""

from __future__ import annotations

import re

from PIL import Image

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Top and bottom module inked, per character.
_CELLS = {" ": (False, False), "▀": (True, False), "▄": (False, True), "█": (True, True)}
_BLOCKS = frozenset("▀▄█")
_MARGIN = 4
_LIGHT, _DARK = 255, 0


def _is_qr_line(line: str) -> bool:
    return all(ch in _CELLS for ch in line)


def find_qr_block(output: str) -> str:
    """The QR block inside a terminal capture with other text around it.

    ANSI escapes and carriage returns are dropped first. The block is the run of
    lines made only of ``▀ ▄ █`` and spaces that holds the most block characters;
    blank lines at its ends are trimmed (with ``invert=True`` the quiet zone is
    blank and indistinguishable from the empty lines around it; the image margin
    restores it). Raises ``ValueError`` if there is no such run.
    """
    lines = _ANSI_ESCAPE.sub("", output).replace("\r", "").split("\n")
    best: list[str] = []
    best_ink = 0
    run: list[str] = []
    for line in [*lines, "not a qr line"]:
        if _is_qr_line(line):
            run.append(line)
            continue
        ink = sum(ch in _BLOCKS for row in run for ch in row)
        if ink > best_ink:
            best, best_ink = run, ink
        run = []
    while best and not best[0].strip():
        best = best[1:]
    while best and not best[-1].strip():
        best = best[:-1]
    if not best:
        raise ValueError("no QR block in the terminal output")
    return "\n".join(best)


def terminal_qr_to_image(block: str, *, invert: bool = False, scale: int = 8) -> Image.Image:
    """A grayscale image of the QR ``block``: dark modules black, light ones white.

    Each character is two modules stacked (top, bottom). Short lines (a terminal
    or a capture may drop trailing spaces) are padded with spaces; a white margin
    of a few modules is added, then every module becomes ``scale`` × ``scale``
    pixels.
    """
    if scale < 1:
        raise ValueError("scale is at least 1")
    lines = block.split("\n")
    width = max(len(line) for line in lines)
    inked, blank = (_DARK, _LIGHT) if invert else (_LIGHT, _DARK)
    image = Image.new("L", (width + 2 * _MARGIN, 2 * len(lines) + 2 * _MARGIN), _LIGHT)
    for row, line in enumerate(lines):
        for col, ch in enumerate(line.ljust(width)):
            try:
                top, bottom = _CELLS[ch]
            except KeyError:
                raise ValueError(f"{ch!r} at line {row + 1} is not a QR block character") from None
            x, y = _MARGIN + col, _MARGIN + 2 * row
            image.putpixel((x, y), inked if top else blank)
            image.putpixel((x, y + 1), inked if bottom else blank)
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
