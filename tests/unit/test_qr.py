"""Terminal QR codes and decoding pairing codes from pictures.

The round trip goes through what a person would see: the daemon's printed block
inside other terminal output, turned back into pixels, saved as a PNG and read
with the controller's decoder.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageFilter

from starmux.client.qr_image import MAX_PIXELS, PREVIEW_CHARS, decode_pairing_code_from_image
from starmux.client.qr_terminal import find_qr_block, terminal_qr_to_image
from starmux.daemon.qr import QUIET_ZONE, qr_module_count, render_terminal_qr
from starmux.errors import PairingCodeError
from starmux.fingerprint import format_fingerprint
from starmux.pairing_code import PairingCode, parse_pairing_code

BLOCK_CHARS = frozenset(" ▀▄█")

hosts = st.from_regex(r"[a-z][a-z0-9-]{0,15}(\.[a-z]{2,6}){1,2}", fullmatch=True)
relay_urls = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
    st.sampled_from(["ws", "wss"]),
    hosts,
    st.one_of(st.just(""), st.integers(1, 65535).map(lambda port: f":{port}")),
    st.from_regex(r"(/[A-Za-z0-9._~-]{1,10}){0,2}", fullmatch=True),
)
fingerprints = st.binary(min_size=20, max_size=20).map(format_fingerprint)
pairing_codes = st.builds(
    PairingCode,
    relay_url=relay_urls,
    relay_fingerprint=fingerprints,
    ticket=st.binary(min_size=16, max_size=16),
    machine_fingerprint=fingerprints,
    secret=st.binary(min_size=32, max_size=32),
)


def sample_code() -> str:
    return PairingCode(
        relay_url="wss://relay.example.com:8443/starmux",
        relay_fingerprint=format_fingerprint(os.urandom(20)),
        ticket=os.urandom(16),
        machine_fingerprint=format_fingerprint(os.urandom(20)),
        secret=os.urandom(32),
    ).to_text()


def terminal_capture(block: str) -> str:
    """What a pty capture of ``starmux daemon start`` might hold around the block."""
    # Colour resets around each line; trailing spaces lost, as some captures do.
    lines = [f"\x1b[0m{line.rstrip()}\x1b[0m" for line in block.split("\n")]
    return (
        "\x1b[?25l$ starmux daemon start\r\n"
        "\x1b[1mScan this with the controller:\x1b[0m\r\n\r\n"
        + "\r\n".join(lines)
        + "\r\n\r\nor paste: starmux://pair/v1?...\r\n \r\nwaiting for the controller ▀\r\n"
    )


def qr_picture(text: str, *, scale: int = 8) -> Image.Image:
    """A clean dark-on-light picture of the QR code for ``text``."""
    return terminal_qr_to_image(render_terminal_qr(text, invert=True), invert=True, scale=scale)


def save(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


def side_by_side(*images: Image.Image) -> Image.Image:
    canvas = Image.new("L", (sum(im.width for im in images), max(im.height for im in images)), 255)
    x = 0
    for image in images:
        canvas.paste(image, (x, 0))
        x += image.width
    return canvas


def png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A tiny valid PNG whose IHDR claims ``width`` × ``height`` (CRC fixed up)."""
    Image.new("L", (8, 8), 255).save(path)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


# --- rendering ------------------------------------------------------------------


@pytest.mark.parametrize("invert", [False, True])
def test_block_shape(invert: bool) -> None:
    text = sample_code()
    lines = render_terminal_qr(text, invert=invert).split("\n")
    side = qr_module_count(text) + 2 * QUIET_ZONE
    assert qr_module_count(text) == 57  # version 10: fits 61 columns
    assert len(lines) == (side + 1) // 2
    assert {len(line) for line in lines} == {side}
    assert set("".join(lines)) <= BLOCK_CHARS


def test_default_inks_light_modules_for_dark_terminals() -> None:
    lines = render_terminal_qr(sample_code()).split("\n")
    # The quiet zone is light, so it is drawn: the top two module rows and the
    # left and right two columns are full blocks.
    assert set(lines[0]) == {"█"}
    assert all(line[:QUIET_ZONE] == line[-QUIET_ZONE:] == "██" for line in lines[:-1])
    # The finder pattern's corner module is dark: left as terminal background.
    assert lines[1][QUIET_ZONE] == " "
    # The half row below the quiet zone is background, not ink.
    assert set(lines[-1]) == {"▀"}


def test_invert_inks_dark_modules_for_light_terminals() -> None:
    lines = render_terminal_qr(sample_code(), invert=True).split("\n")
    assert set(lines[0]) == {" "}
    assert all(line[:QUIET_ZONE] == line[-QUIET_ZONE:] == "  " for line in lines)
    assert lines[1][QUIET_ZONE] == "█"


def test_invert_swaps_every_cell() -> None:
    text = sample_code()
    swap = str.maketrans("█▀▄ ", " ▄▀█")
    normal = render_terminal_qr(text).split("\n")
    inverted = render_terminal_qr(text, invert=True).split("\n")
    # Identical apart from the half row below the symbol, background in both.
    assert [line.translate(swap) for line in normal[:-1]] == inverted[:-1]


# --- round trips ----------------------------------------------------------------


@settings(max_examples=15)
@given(code=pairing_codes)
def test_round_trip_through_printed_terminal_text(
    code: PairingCode, tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory = tmp_path_factory.mktemp("qr")
    for invert in (False, True):
        output = terminal_capture(render_terminal_qr(code.to_text(), invert=invert))
        image = terminal_qr_to_image(find_qr_block(output), invert=invert)
        path = save(image, directory / f"invert-{invert}.png")
        text = decode_pairing_code_from_image(path)
        assert text == code.to_text()
        assert parse_pairing_code(text) == code


@pytest.mark.parametrize("invert", [False, True])
def test_photo_like_degradation_still_decodes(tmp_path: Path, invert: bool) -> None:
    text = sample_code()
    image = terminal_qr_to_image(render_terminal_qr(text, invert=invert), invert=invert)
    small = image.resize((image.width // 3, image.height // 3), Image.Resampling.BILINEAR)
    photo = (
        small.resize(image.size, Image.Resampling.BILINEAR)
        .filter(ImageFilter.GaussianBlur(1))
        .rotate(5, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=255)
        .convert("RGB")
    )
    assert decode_pairing_code_from_image(save(photo, tmp_path / "photo.jpg")) == text


@pytest.mark.parametrize(("invert", "scale", "gap"), [(False, 8, 2), (True, 8, 3), (False, 16, 3)])
def test_screenshot_with_gaps_between_terminal_rows(
    tmp_path: Path, invert: bool, scale: int, gap: int
) -> None:
    # Some terminals leave a few pixels between text rows: a stripe of background
    # colour then crosses the code every two modules (a decoder quirk: the plain
    # decode fails, a fallback repairs it).
    text = sample_code()
    image = terminal_qr_to_image(
        render_terminal_qr(text, invert=invert), invert=invert, scale=scale
    )
    draw = ImageDraw.Draw(image)
    background = 255 if invert else 0
    for y in range(0, image.height, 2 * scale):
        draw.rectangle((0, y, image.width, y + gap - 1), fill=background)
    assert decode_pairing_code_from_image(save(image, tmp_path / "gaps.png")) == text


def test_tiny_screenshot_decodes_after_upscaling(tmp_path: Path) -> None:
    text = sample_code()
    image = qr_picture(text)
    tiny = image.resize((image.width // 7, image.height // 7), Image.Resampling.BILINEAR)
    assert decode_pairing_code_from_image(save(tiny, tmp_path / "tiny.png")) == text


def test_transparent_background_is_read_as_white(tmp_path: Path) -> None:
    text = sample_code()
    gray = qr_picture(text)
    image = Image.new("RGBA", gray.size, (0, 0, 0, 0))  # transparent *black*
    image.putalpha(gray.point(lambda value: 255 - value))  # opaque where dark
    assert decode_pairing_code_from_image(save(image, tmp_path / "alpha.png")) == text


def test_foreign_qr_next_to_the_pairing_code_is_ignored(tmp_path: Path) -> None:
    text = sample_code()
    image = side_by_side(qr_picture("https://example.com/docs"), qr_picture(text))
    assert decode_pairing_code_from_image(save(image, tmp_path / "two.png")) == text


def test_same_code_twice_is_one_code(tmp_path: Path) -> None:
    text = sample_code()
    image = side_by_side(qr_picture(text), qr_picture(text))
    assert decode_pairing_code_from_image(save(image, tmp_path / "twice.png")) == text


# --- refusals -------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PairingCodeError, match=r"no file at .*nope\.png") as info:
        decode_pairing_code_from_image(tmp_path / "nope.png")
    assert info.value.hint


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(PairingCodeError, match="is a directory, not an image"):
        decode_pairing_code_from_image(tmp_path)


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "code.png"
    path.write_text(sample_code())
    with pytest.raises(PairingCodeError, match="is not an image starmux can read") as info:
        decode_pairing_code_from_image(path)
    assert "PNG or JPEG" in (info.value.hint or "")


def test_unsupported_format_stays_closed(tmp_path: Path) -> None:
    path = save(qr_picture(sample_code()), tmp_path / "code.tiff")
    with pytest.raises(PairingCodeError, match="is not an image starmux can read"):
        decode_pairing_code_from_image(path)


def test_truncated_image(tmp_path: Path) -> None:
    path = save(qr_picture(sample_code()), tmp_path / "cut.png")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(PairingCodeError, match="is damaged or truncated"):
        decode_pairing_code_from_image(path)


def test_no_qr_code(tmp_path: Path) -> None:
    noise = Image.effect_noise((400, 300), 40)
    with pytest.raises(PairingCodeError, match="no QR code found in") as info:
        decode_pairing_code_from_image(save(noise, tmp_path / "noise.png"))
    assert "paste the text code" in (info.value.hint or "")


def test_two_different_pairing_codes(tmp_path: Path) -> None:
    image = side_by_side(qr_picture(sample_code()), qr_picture(sample_code()))
    with pytest.raises(PairingCodeError, match="holds 2 different starmux pairing codes"):
        decode_pairing_code_from_image(save(image, tmp_path / "two.png"))


def test_foreign_qr_code(tmp_path: Path) -> None:
    path = save(qr_picture("https://example.com"), tmp_path / "link.png")
    with pytest.raises(
        PairingCodeError, match=r'is not a starmux pairing code \(it reads "https://example.com"\)'
    ):
        decode_pairing_code_from_image(path)


def test_foreign_qr_text_is_shortened_and_escaped(tmp_path: Path) -> None:
    hostile = "\x1b[2J\x1b]0;owned\x07https://evil.example/" + "x" * 300
    path = save(qr_picture(hostile), tmp_path / "evil.png")
    with pytest.raises(PairingCodeError) as info:
        decode_pairing_code_from_image(path)
    message = str(info.value)
    assert "\x1b" not in message
    assert "\x07" not in message
    assert "\\x1b[2J\\x1b]0;owned\\x07https://evil.example/" in message
    assert "x" * (PREVIEW_CHARS + 1) not in message
    assert "…" in message


def test_several_foreign_qr_codes(tmp_path: Path) -> None:
    image = side_by_side(qr_picture("https://a.example"), qr_picture("https://b.example"))
    with pytest.raises(PairingCodeError, match=r"none of the 2 QR codes in .* is a starmux"):
        decode_pairing_code_from_image(save(image, tmp_path / "links.png"))


@pytest.mark.parametrize(("width", "height"), [(100_000, 100_000), (8_000, 6_000)])
def test_huge_image_refused_from_its_header(tmp_path: Path, width: int, height: int) -> None:
    # The file is a few bytes of pixels: decoding it would fail as "damaged", so a
    # "too large" refusal proves nothing was decompressed.
    assert width * height > MAX_PIXELS
    path = png_claiming_size(tmp_path / "bomb.png", width, height)
    with pytest.raises(PairingCodeError, match="is too large to scan"):
        decode_pairing_code_from_image(path)


# --- the test helper ------------------------------------------------------------


def test_find_qr_block_picks_the_largest_run_and_trims_blank_lines() -> None:
    block = render_terminal_qr(sample_code(), invert=True)
    found = find_qr_block(terminal_capture(block))
    # The blank quiet-zone rows are indistinguishable from blank lines and go.
    assert found.split("\n") == [line.rstrip() for line in block.split("\n")][1:-1]


def test_find_qr_block_without_a_block() -> None:
    with pytest.raises(ValueError, match="no QR block"):
        find_qr_block("$ starmux daemon start\nerror: relay unreachable\n\n   \n")


def test_terminal_qr_to_image_rejects_other_characters() -> None:
    with pytest.raises(ValueError, match="is not a QR block character"):
        terminal_qr_to_image("██\n█#")


def test_a_terminal_too_small_for_the_qr_is_told_the_size_it_needs() -> None:
    from starmux.daemon.qr import qr_fit_hint

    qr = render_terminal_qr(sample_code())
    width, height = len(qr.split("\n")[0]), len(qr.split("\n"))
    assert qr_fit_hint(qr, columns=width, rows=height + 6, other_lines=6) is None
    hint = qr_fit_hint(qr, columns=80, rows=24, other_lines=6)
    assert height + 6 > 24  # a real pairing code does not fit an 80×24 window
    assert hint is not None
    assert f"{width}×{height + 6}" in hint and "80×24" in hint and "paste" in hint
    assert qr_fit_hint(qr, columns=width - 1, rows=200, other_lines=6) is not None
