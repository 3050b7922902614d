"""The crash-state checker (tests/crash/check.py) as part of the suite:
every state a crash of the machine or of the daemon may leave while a
photo, a video and an edit are archived and while a rename and an unlink
race an archive, recovered by fsck and a mount and checked. Under the
sanitizer builds every HEVCFS_CRASH_EVERY-th state (run.sh sets it), the
release build all of them."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import BIN

HERE = os.path.dirname(os.path.abspath(__file__))
CHECK = os.path.join(HERE, "..", "crash", "check.py")


@pytest.mark.parametrize("scenario", ["photo", "video", "edit", "rename", "move", "unlink"])
def test_every_crash_state_recovers(scenario, tmp_path):
    assert shutil.which("strace"), "strace is missing: make deps installs it"
    every = os.environ.get("HEVCFS_CRASH_EVERY", "1")
    p = subprocess.run([sys.executable, CHECK, "--scenario", scenario, "--every", every,
                        "--work", str(tmp_path / "work"), "--keep", str(tmp_path / "unsafe")],
                       env=dict(os.environ, HEVCFS_BIN=BIN), capture_output=True, text=True,
                       timeout=1800)
    print(p.stdout[-6000:], p.stderr[-3000:])
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]
    assert "unsafe: 0" in p.stdout
    checked = int(p.stdout.split("crash states checked: ")[1].split(",")[0])
    assert checked >= 10, p.stdout  # a trace that left nothing to check is a failure
