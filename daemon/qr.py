"""Render a pairing code as a QR code made of terminal text.

Each text row carries two module rows with the half blocks ``▀ ▄ █`` and a space,
as ``qrcode``'s ``print_ascii`` does, so the code is square on a terminal whose
cells are about twice as tall as they are wide.

Which modules get ink
---------------------
A terminal only draws *its foreground colour* (the glyphs) on *its background
colour* (the spaces); we cannot choose either without ANSI colours, which logs and
``screen``/``tmux`` captures often lose. Phone scanners want dark modules on a
light background. So:

- ``invert=False`` (the default) is for the usual **light text on a dark
  background**: the *light* modules and the quiet zone are drawn as blocks and the
  dark modules are left as the (dark) terminal background. The result looks like a
  negative on paper but is a correct QR code on screen.
- ``invert=True`` is for **dark text on a light background**: the *dark* modules
  are drawn as blocks; the quiet zone is blank and the light background shows
  through.

The default favours dark terminals because they are the default of most terminal
emulators, consoles and SSH clients. Note that this is the opposite sense of
``qrcode``'s own ``print_ascii(invert=...)``.

With ``invert=False`` the quiet zone is *drawn* (it is the only light margin the
scanner gets), so it costs terminal width: :data:`QUIET_ZONE` is 2 modules, the
least that common scanners accept, to keep a ~200-character code (version 10,
57 modules) within 61 columns. With ``invert=True`` the terminal background
extends the quiet zone for free.
"""

from __future__ import annotations

import qrcode
import qrcode.constants

#: Modules of quiet zone drawn around the symbol on each side.
QUIET_ZONE = 2

# Index: (top module inked) | (bottom module inked) << 1.
_CELLS = (" ", "▀", "▄", "█")


def _matrix(text: str) -> list[list[bool]]:
    """The symbol's modules (True = dark), quiet zone included."""
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=QUIET_ZONE)
    code.add_data(text)
    code.make(fit=True)
    return [[bool(module) for module in row] for row in code.get_matrix()]


def qr_module_count(text: str) -> int:
    """Modules per side of the symbol for ``text``, without the quiet zone.

    The rendered block is ``qr_module_count(text) + 2 * QUIET_ZONE`` columns wide,
    which lets a caller check the terminal is wide enough before printing.
    """
    return len(_matrix(text)) - 2 * QUIET_ZONE


def render_terminal_qr(text: str, *, invert: bool = False) -> str:
    """The QR code for ``text`` as lines of ``▀ ▄ █`` and spaces, joined with ``"\\n"``.

    ``invert=False`` inks the light modules (for light-on-dark terminals, the
    default); ``invert=True`` inks the dark ones (for dark-on-light terminals).
    Every line has the same width; there is no trailing newline.
    """
    matrix = _matrix(text)
    size = len(matrix)
    # An odd row count leaves half a text row below the quiet zone: draw it as
    # background in both senses, so the block ends on a clean edge.
    background = [not invert] * size
    rows = [*matrix, background] if size % 2 else matrix
    lines = []
    for top, bottom in zip(rows[0::2], rows[1::2], strict=True):
        lines.append(
            "".join(
                _CELLS[(upper == invert) | (lower == invert) << 1]
                for upper, lower in zip(top, bottom, strict=True)
            )
        )
    return "\n".join(lines)


def qr_fit_hint(qr: str, *, columns: int, rows: int, other_lines: int) -> str | None:
    """What to tell a person whose terminal cannot show ``qr`` whole, or None.

    ``other_lines`` are the lines printed with it (the text code, the fingerprint...)
    that must fit on the same screen for the QR's top not to scroll away. A partly
    scrolled QR does not scan, and nothing says why: so the size it needs is said.
    """
    lines = qr.split("\n")
    width, height = max(len(line) for line in lines), len(lines) + other_lines
    if width <= columns and height <= rows:
        return None
    return (
        f"this QR code needs a window of {width}×{height} characters and this one is "
        f"{columns}×{rows}: enlarge the window (or zoom out) to scan it, or paste the "
        "text code below"
    )
