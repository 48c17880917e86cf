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


def _servers_of(pid: int) -> list[int]:
    """Pids of the live Prefect servers the command `pid` started (in a session of their own, so that a
    Ctrl-C at the terminal does not reach them; found by the parent pid the guard passes them)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if b"flows._prefect_server" in cmdline and cmdline[cmdline.index(b"flows._prefect_server") + 1:][:2] == \
                    [b"--parent-pid", str(pid).encode()] and state != "Z":
                found.append(int(proc.name))
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
    servers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not (servers := _servers_of(proc.pid)):
            assert proc.poll() is None and time.monotonic() < deadline, "the command ended before its server started"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)  # the command only, as the kernel's OOM killer would
        proc.wait()
        deadline = time.monotonic() + 20
        while _servers_of(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _servers_of(proc.pid) == []
    finally:
        for pid in [proc.pid, *servers]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


_SLEEPER = """
import sys, time, typer
from flows.console import run_cli
app = typer.Typer()

@app.command()
def wait(seconds: float = 60.0) -> None:
    print("ready", flush=True)
    time.sleep(seconds)

sys.argv = ["auralsam2", "--seconds", sys.argv[1]]
run_cli(app)
"""


@pytest.mark.parametrize(("signum", "status"), [(2, 130), (15, 143)])
def test_a_signal_stops_a_command_with_one_line(signum: int, status: int) -> None:
    """Ctrl-C (SIGINT) and SIGTERM: exit 130 / 143, the one `interrupted` line, no traceback."""
    import signal

    proc = subprocess.Popen([sys.executable, "-c", _SLEEPER, "60"], cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.Signals(signum))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == status and "interrupted; run the same command again" in err
    assert "Traceback" not in err


def test_a_signal_after_the_command_finished_cannot_cut_its_exit_short() -> None:
    """Once the work is done, Ctrl-C / SIGTERM are ignored while the command exits (Prefect stops its
    server then), instead of Python's default handlers killing it silently at finalisation."""
    import signal

    before = signal.getsignal(signal.SIGINT)
    done = subprocess.run([sys.executable, "-c", _SLEEPER + "\n", "0"], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    script = _SLEEPER.replace("run_cli(app)", """try:
    run_cli(app)
finally:
    import os, signal
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.5)
    print("exited cleanly", flush=True)""")
    done = subprocess.run([sys.executable, "-c", script, "0"], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "exited cleanly" in done.stdout, done.stderr[-1000:]
    assert signal.getsignal(signal.SIGINT) is before  # (this process's own handlers untouched)


_STOP_IN_A_GC_CALLBACK = """
import gc, os, signal, sys, time, typer, weakref
from flows.console import run_cli
app = typer.Typer()

class Resource:
    pass

@app.command()
def work(bridge: str = "") -> None:
    if bridge:  # inside a Prefect flow run, SIGTERM raises Prefect's TerminationSignal instead
        from prefect.utilities.engine import _prefect_sigterm_handler
        signal.signal(signal.SIGTERM, _prefect_sigterm_handler)
    def collected(_):  # the signal lands while Python runs a callback whose errors it only prints
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
    resource = Resource()
    ref = weakref.ref(resource, collected)
    del resource
    gc.collect()
    time.sleep(5)  # more work, with no stop check in it
    print("finished the work", flush=True)

sys.argv = ["auralsam2", *sys.argv[1:]]
run_cli(app)
"""


@pytest.mark.parametrize("bridge", ["", "prefect"])
def test_a_stop_that_lands_in_a_garbage_collection_callback_still_stops(bridge: str) -> None:
    """Python only prints an exception raised in a weakref callback or `__del__`: a SIGTERM that lands
    there (ours, or Prefect's inside a flow run) is delivered again in the command's own code."""
    args = ["--bridge", bridge] if bridge else []
    done = subprocess.run([sys.executable, "-c", _STOP_IN_A_GC_CALLBACK, *args],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=60)
    assert done.returncode == 143, (done.returncode, done.stdout, done.stderr[-2000:])
    assert "finished the work" not in done.stdout
    assert "interrupted; run the same command again" in done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr[-2000:]
