"""Run promtool from the Prometheus image the lab itself runs (`make images` built or
pulled it), so tests check with the same Prometheus version and need nothing on the
host; fall back to a promtool on PATH; say why when neither exists."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from distlab.runtime.compose import read_images_env

REPO = Path(__file__).resolve().parents[2]


def prometheus_image() -> str | None:
    return read_images_env(REPO).get("DISTLAB_PROMETHEUS_IMAGE") or None


def promtool_argv() -> list[str] | None:
    image = prometheus_image()
    if image and shutil.which("docker") and subprocess.run(
            ["docker", "image", "inspect", image], capture_output=True).returncode == 0:
        return ["docker", "run", "--rm", "--network", "none", "--label", "distlab.lab=test",
                "-v", f"{REPO}:{REPO}:ro", "-w", str(REPO), "--entrypoint", "promtool", image]
    if shutil.which("promtool"):
        return ["promtool"]
    return None


UNAVAILABLE = "no promtool: run `make images` (or install Debian's prometheus package)"


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    argv = promtool_argv()
    assert argv is not None, UNAVAILABLE
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=120, cwd=REPO)
