"""
The package as users get it: built as a wheel, installed into a fresh virtualenv outside any
checkout, it runs the vendor sandbox (by its new and its old command) with nothing from ``tests/``.

The build works on a copy of the package's sources, so the checkout gets no ``build/`` folder, and
uv installs from its cache (the same pinned versions ``make setup`` installed), which keeps the
whole module to a few seconds. Every wait is on the sandbox's own output or answers, bounded by a
generous timeout, never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from airflow_provider_readreceipts.testing import sandbox

REPO = Path(__file__).resolve().parents[1]
#: uv comes with the project's virtualenv (``make setup`` installs it next to the interpreter).
UV = Path(sys.executable).parent / "uv"
#: What building the wheel reads: ``pyproject.toml`` names the README as the long description.
BUILD_INPUTS = ("pyproject.toml", "README.md", "airflow_provider_readreceipts")
#: Ceilings for a loaded machine: the waits they bound usually end in a second or two.
COMMAND_TIMEOUT = 600.0
STARTUP_TIMEOUT = 120.0
LISTENING = re.compile(r"sandbox listening on (http://127\.0\.0\.1:\d+)")
#: Nothing listens on the discard port: the sandbox's webhooks go nowhere, which this test ignores.
NOWHERE = "http://127.0.0.1:9/webhooks"


def _environment() -> dict[str, str]:
    """This process's environment without what would let the checkout leak into the install."""
    hidden = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    return {name: value for name, value in os.environ.items() if name not in hidden}


def _run(command: Sequence[str | Path], *, cwd: Path) -> str:
    # Our own uv and interpreter on paths we made: no untrusted input in the command.
    done = subprocess.run(  # noqa: S603
        [str(part) for part in command],
        cwd=cwd,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@dataclass(frozen=True)
class Installed:
    """The wheel and the virtualenv it was installed into."""

    wheel: Path
    python: Path
    #: A working directory outside the checkout, for every command run with ``python``.
    elsewhere: Path


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    if not UV.is_file():
        pytest.fail(f"uv is not installed next to {sys.executable}: run `make setup`", pytrace=False)
    root = tmp_path_factory.mktemp("wheel")
    sources = root / "sources"
    sources.mkdir()
    for name in BUILD_INPUTS:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(
                source, sources / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        else:
            shutil.copy2(source, sources / name)
    dist, venv, elsewhere = root / "dist", root / "venv", root / "elsewhere"
    elsewhere.mkdir()
    try:
        _run([UV, "build", "--wheel", "--python", sys.executable, "--out-dir", dist, sources], cwd=root)
        (wheel,) = dist.glob("airflow_provider_readreceipts-*.whl")
        _run([UV, "venv", "--python", sys.executable, venv], cwd=root)
        python = venv / "bin" / "python"
        _run(
            [UV, "pip", "install", "--python", python, "-c", REPO / "constraints.txt", wheel],
            cwd=root,
        )
        yield Installed(wheel, python, elsewhere)
    finally:
        # The installed package holds the fakes' credentials: the session's secret scan reads every
        # file under pytest's temporary folder, and must not find them in a copy of the sources.
        shutil.rmtree(root, ignore_errors=True)


def test_the_wheel_ships_the_testing_package_and_nothing_of_the_test_suite(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
    package = "airflow_provider_readreceipts"
    for module in ("server", "sendblue", "chert", "ryze", "direct7"):
        assert f"{package}/testing/fakes/{module}.py" in names
    for module in ("__init__", "__main__", "server", "vendors", "delivery", "fates"):
        assert f"{package}/testing/sandbox/{module}.py" in names
    for module in ("__init__", "__main__", "fates"):
        assert f"{package}/sandbox/{module}.py" in names, "the old sandbox path still installs"
    assert not [name for name in names if name.startswith("tests/")]


def test_the_installed_sandbox_is_imported_from_the_virtualenv_without_the_test_suite(
    installed: Installed,
) -> None:
    script = (
        "import json, sys\n"
        "import airflow_provider_readreceipts.testing.sandbox.server as server\n"
        "import airflow_provider_readreceipts.sandbox.fates as old_fates\n"
        "print(json.dumps({'file': server.__file__, 'old_fates': old_fates.__file__,\n"
        "    'tests': sorted(m for m in sys.modules if m == 'tests' or m.startswith('tests.')),\n"
        "    'airflow': 'airflow' in sys.modules}))\n"
    )
    found = json.loads(_run([installed.python, "-c", script], cwd=installed.elsewhere))

    site_packages = str(installed.python.parents[1])
    assert found["file"].startswith(site_packages), found
    assert found["old_fates"].startswith(site_packages), found
    assert found["tests"] == []
    assert found["airflow"] is False, "the sandbox and its fakes need no Airflow"


class SandboxProcess:
    """The installed sandbox as a child process; its output lines are read as they come."""

    def __init__(self, python: Path, module: str, *, cwd: Path) -> None:
        command = [str(python), "-m", module, "--port", "0", "--receiver-url", NOWHERE]
        command += ["--max-runtime", "600"]
        # The installed interpreter running the installed package: no untrusted input.
        self.process = subprocess.Popen(  # noqa: S603
            command,
            cwd=cwd,
            env=_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)  # the process closed its output: it exited

    def wait_listening(self, timeout: float = STARTUP_TIMEOUT) -> str:
        """The sandbox's URL, from the line it prints once it serves."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"no 'sandbox listening' line in {timeout:.0f}s:\n{''.join(self.output)}")
            if line is None:
                self.process.wait(30)
                pytest.fail(f"the sandbox exited with {self.process.returncode}:\n{''.join(self.output)}")
            self.output.append(line)
            match = LISTENING.search(line)
            if match:
                return match.group(1)

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; its exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        return self.process.returncode

    def all_output(self) -> str:
        """Everything it printed (call after :meth:`stop`)."""
        while True:
            try:
                line = self.lines.get(timeout=STARTUP_TIMEOUT)
            except queue.Empty:
                break
            if line is None:
                break
            self.output.append(line)
        return "".join(self.output)


def _sendblue_headers() -> Mapping[str, str]:
    return {"sb-api-key-id": sandbox.SENDBLUE_KEY_ID, "sb-api-secret-key": sandbox.SENDBLUE_API_SECRET}


@pytest.mark.parametrize(
    "module",
    ["airflow_provider_readreceipts.testing.sandbox", "airflow_provider_readreceipts.sandbox"],
    ids=["new-path", "old-path"],
)
def test_the_installed_sandbox_serves_every_vendor(installed: Installed, module: str) -> None:
    box = SandboxProcess(installed.python, module, cwd=installed.elsewhere)
    try:
        url = box.wait_listening()
        with httpx.Client(base_url=url, timeout=STARTUP_TIMEOUT) as client:
            health = client.get("/_sandbox/healthz")
            sent = client.post(
                "/sendblue/api/send-message",
                headers=_sendblue_headers(),
                json={"number": "+14155550100", "from_number": sandbox.SENDBLUE_LINE, "content": "Hi!"},
            )
            state = client.get("/_sandbox/state")
    finally:
        returncode = box.stop()

    assert health.status_code == 200, health.text
    assert health.json() == {"status": "ok", "vendors": ["chert", "direct7", "ryze", "sendblue"]}
    assert sent.status_code == 202, sent.text
    handle = sent.json()["message_handle"]
    (planned,) = [m for m in state.json()["messages"] if m["message_id"] == handle]
    # The number ends in 0: the sandbox's rule says read.
    assert (planned["vendor"], planned["recipient"], planned["fate"]) == ("sendblue", "+14155550100", "read")
    assert returncode == 0, box.all_output()
