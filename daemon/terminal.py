"""What the daemon shows a person: pairing QR and code, countdown, status lines.

Human output goes to stdout; with ``json_lines`` every event is one JSON object
per line instead (for scripts and supervisors). Diagnostics go through ``logging``
(stderr) and never contain secrets. The pairing code *does* contain the pairing
secret: showing it to the person at this terminal is its purpose. When the output
is not a terminal (systemd's journal, a log file), the daemon passes ``code_file``:
the code goes to that 0600 file instead and only its path is printed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from starmux.home import write_private_file

from .qr import qr_fit_hint, render_terminal_qr


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Terminal:
    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        json_lines: bool = False,
        code_file: Path | None = None,
    ) -> None:
        self.stream = stream or sys.stdout
        self.code_file = code_file
        self.json_lines = json_lines
        self.tty = self.stream.isatty() and not json_lines
        self.colour = self.tty and "NO_COLOR" not in os.environ
        self._countdown_shown = False

    def _write(self, text: str) -> None:
        if self._countdown_shown:
            self.stream.write("\r\x1b[K" if self.tty else "")
            self._countdown_shown = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def event(self, name: str, text: str, **fields: Any) -> None:
        if self.json_lines:
            self._write(json.dumps({"event": name, "at": time.time(), **fields}))
        else:
            self._write(text)

    def _bold(self, text: str) -> str:
        return f"\x1b[1m{text}\x1b[0m" if self.colour else text

    def pairing(
        self, *, code: str, machine_fingerprint: str, machine_name: str, expires_in: float
    ) -> None:
        if self.code_file is not None:
            write_private_file(self.code_file, (code + "\n").encode())
            self.event(
                "pairing-code-file",
                f"This machine ({machine_name}, {machine_fingerprint}) is not paired yet. "
                "Its pairing code is a secret and this output is not a terminal, so it "
                f"is in {self.code_file} (0600): read it there and paste it into "
                f"`starmux pair` on your controller. It expires in {_clock(expires_in)}; "
                "each new code replaces the file.",
                code_file=str(self.code_file),
                machine_fingerprint=machine_fingerprint,
                machine_name=machine_name,
                expires_in=round(expires_in),
            )
            return
        if self.json_lines:
            self.event(
                "pairing-code",
                "",
                code=code,
                machine_fingerprint=machine_fingerprint,
                machine_name=machine_name,
                expires_in=round(expires_in),
            )
            return
        qr = render_terminal_qr(code)
        after = [
            "",
            f"  {code}",
            "",
            f"machine fingerprint: {machine_fingerprint}",
            f"the code expires in {_clock(expires_in)}; a new one follows automatically",
            "",
        ]
        lines = [
            "",
            f"This machine ({self._bold(machine_name)}) is not paired yet.",
            "On your controller, scan this QR code (save a screenshot and run",
            "`starmux pair --image FILE`) or paste the code below into `starmux pair`.",
            "",
            qr,
            *after,
        ]
        if self.tty:
            size = shutil.get_terminal_size()
            hint = qr_fit_hint(qr, columns=size.columns, rows=size.lines, other_lines=len(after))
            if hint:
                lines.insert(-1, f"note: {hint}")
        self._write("\n".join(lines))

    def forget_code(self) -> None:
        """Paired: the code is useless now, and its file goes."""
        if self.code_file is not None:
            self.code_file.unlink(missing_ok=True)

    def countdown(self, remaining: float) -> None:
        """Live countdown on a terminal; silent otherwise (the expiry was printed)."""
        if not self.tty:
            return
        self.stream.write(f"\r\x1b[Kwaiting for a controller… code expires in {_clock(remaining)}")
        self.stream.flush()
        self._countdown_shown = True
