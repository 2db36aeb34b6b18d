"""What the newer benchmark scripts (rag.py, train.py) share: the machine they ran on and writing their
section of BENCHMARKS.md between its markers."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def machine(packages: Sequence[str]) -> dict:
    """Python, platform, date, load average, CPU model and count, RAM, and the versions of `packages`."""
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "load_before": os.getloadavg()[0]}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        info["cpu"] = fields.get("Model name", "?").strip()
        info["cpus"] = fields.get("CPU(s)", "?").strip()
    except OSError:
        pass
    with open("/proc/meminfo") as f:
        info["ram_gb"] = round(int(f.readline().split()[1]) / 1024**2, 1)
    from importlib.metadata import PackageNotFoundError, version

    for pkg in packages:
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            info[pkg] = "not installed"
    return info


def write_section(md: Path, begin: str, end: str, section: str) -> bool:
    """Replace what lies between the `begin` and `end` markers of `md`; False (and a note) without them."""
    text = md.read_text() if md.exists() else ""
    if begin not in text or end not in text:
        print(f"note: {md} has no {begin} ... {end} markers; nothing written (add them where the section goes)",
              file=sys.stderr)
        return False
    text = text[:text.index(begin)] + f"{begin}\n{section}{end}" + text[text.index(end) + len(end):]
    md.write_text(text)
    return True
