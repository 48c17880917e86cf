"""User errors are one `error:` line, never a traceback (`--debug` shows it); an ingest folder is
never taken over by another raw root without --force; one writer per folder (a lock)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from data_specs.synth import SynthConfig, generate_world


def _command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows", *args], capture_output=True, text=True, timeout=300)


def test_a_user_error_is_one_line_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    done = _command("synth", "--clips", "2", "--out", str(tmp_path / "w"))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: invalid SynthConfig: clips: Input should be greater than or equal to 4"]
    debug = _command("--debug", "synth", "--clips", "2", "--out", str(tmp_path / "w"))
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ValidationError" in debug.stderr


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> tuple[Path, Path]:
    a, b = tmp_path_factory.mktemp("world_a"), tmp_path_factory.mktemp("world_b")
    generate_world(a, SynthConfig(seed=1, clips=4, size=64), progress=False)
    generate_world(b, SynthConfig(seed=2, clips=4, size=64), progress=False)
    return a / "REFAVS", b / "REFAVS"


def _ingest(root: Path, out: Path, *extra: str):
    from flows.cli import app

    return CliRunner().invoke(app, ["ingest", "--dataset", "refavs", "--root", str(root), "--out", str(out), *extra])


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_another_raw_root_never_replaces_an_ingest_without_force(worlds, tmp_path: Path) -> None:
    a, b = worlds
    out = tmp_path / "ingest"
    assert _ingest(a, out).exit_code == 0
    before = _tree(out)
    refused = _ingest(b, out)
    assert refused.exit_code == 1 and "already holds an ingest of refavs (all) from" in refused.output
    assert str(a.resolve()) in refused.output and "--force" in refused.output
    assert _tree(out) == before  # nothing touched
    forced = _ingest(b, out, "--force")
    assert forced.exit_code == 0, forced.output
    import json

    assert json.loads((out / "ingest.json").read_text())["root"] == str(b.resolve())
    assert _ingest(b, out).exit_code == 0  # the same root again: reused


def test_two_writers_of_one_folder_serialise_on_its_lock(worlds, tmp_path: Path) -> None:
    """A second ingest into a folder another process is writing fails at once, naming the folder;
    once the first is done (here: killed, as kill -9 would) the folder is free again."""
    a, _ = worlds
    out = tmp_path / "ingest"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom auralsam2.utils.locks import folder_lock\n"
        f"with folder_lock({str(out)!r}, 'ingest'):\n    print('held', flush=True)\n    time.sleep(120)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        busy = _ingest(a, out)
        assert busy.exit_code == 1 and f"{out} is being written by another ingest" in busy.output
        assert not (out / "manifest.parquet").exists()
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    assert _ingest(a, out).exit_code == 0  # the kernel dropped the dead process's lock


def _group(pgid: int) -> list[str]:
    """Command lines of the live processes in process group `pgid`."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
                fields = stat[stat.rindex(")") + 2:].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except (OSError, ValueError):
                pass
    return found


def test_a_killed_command_leaves_no_prefect_server_behind(worlds, tmp_path: Path) -> None:
    """kill -9 of a command while its ephemeral Prefect server runs: the server ends by itself."""
    import os
    import signal

    a, _ = worlds
    env = {**os.environ, "AURALSAM2_HOME": str(tmp_path / "data"), "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "flows", "ingest", "--dataset", "refavs", "--root", str(a), "--out",
                             str(tmp_path / "ingest"), "--clips-per-shard", "1"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not any("flows._prefect_server" in c for c in _group(proc.pid)):
            assert proc.poll() is None and time.monotonic() < deadline, "the command ended before its server started"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)  # the command only, as the kernel's OOM killer would
        proc.wait()
        deadline = time.monotonic() + 20
        while _group(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _group(proc.pid) == []
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
