"""``flowlearn down`` stops what the stack started, an orphaned TaskManager included."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from flowlearn.conf import load_settings
from flowlearn.devstack import stack
from flowlearn.devstack.processes import pid_file, running_pid


def test_down_stops_a_taskmanager_whose_supervisor_was_killed(tmp_path: Path) -> None:
    """A SIGKILLed supervisor leaves its child (the TaskManager JVM) running; ``down`` used
    to stop only the supervisor's pid, and the orphan outlived the stack."""
    settings = load_settings(env={"FLOWLEARN__STACK__HOME": str(tmp_path / "home")})
    settings.stack.run.mkdir(parents=True)
    env = {**os.environ, "FLOWLEARN_HOME": str(settings.stack.home)}
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    try:
        pid_file(settings, "taskmanager-child").write_text(f"{orphan.pid}\n")
        assert running_pid(settings, "taskmanager-child") == orphan.pid
        assert stack.down(settings) == ["taskmanager-child"]
        deadline = time.monotonic() + 10
        while orphan.poll() is None:
            assert time.monotonic() < deadline, "the orphan is still running"
            time.sleep(0.05)
    finally:
        if orphan.poll() is None:
            orphan.kill()
        orphan.wait()
