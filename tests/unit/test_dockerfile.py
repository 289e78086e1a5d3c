"""The relay's Dockerfile: checked by parsing (no Docker engine here) and by running
its install steps in a clean virtual environment."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..timeouts import scaled

ROOT = Path(__file__).resolve().parents[2]


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def _one(keyword: str) -> str:
    values = [rest for key, rest in _instructions() if key == keyword]
    assert len(values) == 1, f"expected one {keyword}, found {values}"
    return values[0]


def test_slim_python_base() -> None:
    base = _one("FROM")
    assert base.startswith("python:3.1") and base.endswith("-slim"), base


def test_runs_as_non_root_user() -> None:
    user = _one("USER")
    assert user not in ("root", "0")
    creates_user = any(k == "RUN" and "useradd" in r and user in r for k, r in _instructions())
    assert creates_user, "the USER is never created"
    # USER comes after the last RUN, so nothing runs as root at runtime.
    keywords = [k for k, _ in _instructions()]
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")


def test_data_volume_matches_the_relay_data_dir() -> None:
    volume = json.loads(_one("VOLUME"))
    assert volume == ["/data"]
    assert "STARMUX_RELAY_DATA_DIR=/data" in _one("ENV")


def test_exposes_the_default_port() -> None:
    assert _one("EXPOSE") == "8765"


def test_healthcheck_uses_health_endpoint() -> None:
    healthcheck = _one("HEALTHCHECK")
    assert "/health" in healthcheck and "8765" in healthcheck
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert command[0] == "python"


def test_entrypoint_serves_on_all_interfaces() -> None:
    assert json.loads(_one("ENTRYPOINT")) == ["starmux", "relay", "serve", "--host", "0.0.0.0"]


def test_copied_sources_exist_and_cover_every_package() -> None:
    copied = [shlex.split(rest)[0] for key, rest in _instructions() if key == "COPY"]
    for source in copied:
        for name in source.split():
            assert (ROOT / name).exists(), name
    for package in ("starmux", "relay", "daemon", "client"):
        assert package in copied


@pytest.mark.slow
@pytest.mark.timeout(900)  # pip below has its own bound
def test_install_steps_work_in_a_clean_venv(tmp_path: Path) -> None:
    """Replay the Dockerfile's COPY and pip steps into a fresh venv, then run the entrypoint."""
    context = tmp_path / "app"
    context.mkdir()
    for key, rest in _instructions():
        if key == "COPY":
            *sources, _destination = shlex.split(rest)
            for source in sources:
                src = ROOT / source
                if src.is_dir():
                    shutil.copytree(
                        src, context / source, ignore=shutil.ignore_patterns("__pycache__")
                    )
                else:
                    shutil.copy(src, context / source)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip_steps = [rest for key, rest in _instructions() if key == "RUN" and "pip install" in rest]
    assert pip_steps, "no pip install step"
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    env.pop("VIRTUAL_ENV", None)
    for step in pip_steps:
        subprocess.run(step, shell=True, cwd=context, env=env, check=True, timeout=scaled(600))
    result = subprocess.run(
        [str(venv / "bin" / "starmux"), "relay", "serve", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=scaled(60),
    )
    assert result.returncode == 0, result.stderr
    assert "--host" in result.stdout
