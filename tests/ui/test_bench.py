"""bench/ui.py still runs: a small fill, every page answered with the rows it should show."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.harness import REPO_ROOT, command_env


def test_ui_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "ui.json"
    argv = [sys.executable, str(REPO_ROOT / "bench" / "ui.py"), "--repos", "300", "--tags", "120"]
    argv += ["--runs", "2", "--warm", "1", "--out", str(out)]
    done = subprocess.run(argv, env=command_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert (report["repos"], report["tags"]) == (300, 120)
    pages = {page["page"]: page for page in report["pages"]}
    assert "/" in pages and "/repositories/big/app?sort=pushed" in pages
    assert all(page["median_ms"] > 0 and 0 < page["bytes"] < 200 * 1024 for page in pages.values())
