"""Untrusted inputs and the user's own files: each case a named trial, met the way a user meets it
(the real command line), with a verdict.

A small workspace is built once with the real CLI (synthetic world -> ingest -> tiny-SAM2 cache ->
a tracked training run). Each trial copies what it needs, plants one hostile input or one ordinary
mistake, runs one command (forked from this process, warm; or a fresh process when the trial
changes the environment), and checks what a demanding user expects: exit status 1 with one
`error:` line naming the thing (or success where the input is merely odd), no traceback, nothing
outside the command's own output touched, no code of the input run, time and memory bounded.

Verdicts: `ok`, `failed` (the detail says why), `skipped` (the machine cannot set up the case:
`chattr +i` needs root on a file system that supports it). Ctrl-C / SIGTERM are trials of
`bench.kill_injection --signals INT,TERM`.

`python -m bench.untrusted_probe [--home DIR] [--only NAME,...] [--json OUT]`; `tests/test_untrusted_inputs.py`
runs the fast trials; `bench/bench_untrusted.py` records the table for `make bench`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.fault_injection import EPOCH, TINY_MODEL, prefect_server

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240.0


# ------------------------------------------------------------------ the workspace and running commands


@dataclass
class Workspace:
    root: Path
    api_url: str | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    def use(self) -> None:
        """Make `env()` this process's environment (the forked commands inherit it)."""
        wanted = self.env()
        for key in [k for k in os.environ if k not in wanted]:
            del os.environ[key]
        os.environ.update(wanted)

    def env(self, **changes: str | None) -> dict[str, str]:
        env = {**os.environ, "AURALSAM2_HOME": str(self.data), "PREFECT_HOME": str(self.root / "prefect"),
               "SOURCE_DATE_EPOCH": EPOCH, "OMP_NUM_THREADS": "1", "AURALSAM2_DEBUG": "0"}
        env.pop("MLFLOW_TRACKING_URI", None)
        env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
        if self.api_url:
            env["PREFECT_API_URL"] = self.api_url
        for key, value in changes.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def train_sets(self, *extra: str) -> list[str]:
        sets = [f"data.cache={self.root / 'cache'}", "data.dataset=avss", "experiment=probe", "eval.splits=[test]",
                *TINY_MODEL, *extra]
        return [x for s in sets for x in ("--set", s)]


@dataclass
class Result:
    status: int | None  # None: killed at the time limit
    output: str  # stdout + stderr
    seconds: float
    peak_mb: float


def cli(ws: Workspace, *args: str, fresh: bool = False, timeout: float = TIMEOUT_S, **env: str | None) -> Result:
    """Run `auralsam2 ARGS` on `ws`'s data folder (with `env` changed): forked from this warm process,
    or a fresh one when `fresh` (for variables `flows` reads once, at import: Prefect's)."""
    scratch = Path(tempfile.mkdtemp(prefix="probe-"))
    out = scratch / "out"
    started = time.monotonic()
    if fresh:
        with open(out, "w") as sink:
            pid = subprocess.Popen([sys.executable, "-m", "flows", *args], env=ws.env(**env), cwd=REPO, stdout=sink,
                                   stderr=subprocess.STDOUT, start_new_session=True).pid
    else:
        pid = _fork(list(args), out, {"AURALSAM2_HOME": str(ws.data), **env})
    status, peak = None, 0.0
    while time.monotonic() - started < timeout:
        done, raw, usage = os.wait4(pid, os.WNOHANG)
        if done:
            status, peak = os.waitstatus_to_exitcode(raw), usage.ru_maxrss / 1024
            break
        time.sleep(0.02)
    else:
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    text = out.read_text(errors="replace")
    shutil.rmtree(scratch, ignore_errors=True)
    return Result(status, text, time.monotonic() - started, peak)


def _fork(argv: list[str], out: Path, env: dict[str, str | None]) -> int:
    pid = os.fork()
    if pid == 0:  # the child: `auralsam2 ARGV` as its entry point runs it
        code = 3
        try:
            os.setpgid(0, 0)
            for key, value in env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            sys.argv = ["auralsam2", *argv]
            from flows.cli import main

            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 (an escaped exception is the trial's verdict)
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


BUILD = """
import math, sys
from pathlib import Path
import torch
from auralsam2.config import load_config
from data_specs.ingest import finalize, prepare
from data_specs.shards import write_shard
from data_specs.synth import SynthConfig, generate_world
from feature_cache.build import build_cache
from feature_cache.schema import CacheSettings

root = Path(sys.argv[1])
generate_world(root / "world", SynthConfig(clips=4, size=64), progress=False)
plan = prepare("avss", root / "world" / "AVSBench", root / "ingest", subset="v1m", clips_per_shard=2)
finalize(plan, [write_shard(p, Path(plan.out) / "shards") for p in plan.shards])
build_cache(root / "ingest", root / "cache", CacheSettings(sam2_config="tiny", device="cpu"), progress=False)

# a checkpoint with its config inside (random weights under a fixed seed) and an MLflow store with runs
from auralsam2.engine import build_model
from auralsam2.engine.state import save_best
from feature_cache.dataset import open_reader
from flows import tracking

cfg = load_config(None, sys.argv[2:]).with_run_name("base")
torch.manual_seed(0)
save_best(root / "base.ckpt", build_model(cfg.model, open_reader(cfg).model), cfg, 0, 0, math.nan, None, None)
for name in ("base", "other"):
    run = tracking.start_run(cfg.experiment, name)
    tracking.client().log_metric(run, "train/total", 1.0, step=1)
    tracking.end_run(run)
"""


def build_workspace(root: Path, api_url: str | None) -> Workspace:
    """World (4 clips per subset, 64 px) -> AVSS v1m shards -> tiny-SAM2 cache, a checkpoint of the tiny
    model and an MLflow store with two runs: built by the library in one fresh process (~30 s)."""
    ws = Workspace(root, api_url)
    if (root / ".complete").is_file():
        return ws
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    sets = [s for s in ws.train_sets() if s != "--set"]
    done = subprocess.run([sys.executable, "-c", BUILD, str(root), *sets], env=ws.env(), cwd=REPO,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"building the probe's workspace failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    (root / ".complete").write_text("ok\n")
    return ws


def _preimport() -> None:
    """What the commands import, loaded once before the forks (each child starts warm)."""
    import torch

    torch.set_num_threads(1)
    import dashboards.report  # noqa: F401
    import feature_cache.build  # noqa: F401
    import flows.cache  # noqa: F401
    import flows.cli  # noqa: F401
    import flows.evaluate  # noqa: F401
    import flows.ingest  # noqa: F401
    import flows.train  # noqa: F401


# ------------------------------------------------------------------ verdict helpers


class Failed(AssertionError):
    """A trial's expectation that does not hold (its message is the verdict's detail)."""


def expect(condition: bool, detail: str) -> None:
    if not condition:
        raise Failed(detail)


def one_error_line(result: Result, *words: str) -> None:
    """Exit 1, one `error:` message (a config error lists its fields on the lines below it) holding
    `words`, no traceback."""
    text = result.output
    expect(result.status == 1, f"exit status {result.status}, not 1: {text[-600:]}")
    expect("Traceback" not in text, f"a traceback: {text[text.find('Traceback'):][:600]}")
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    expect(len(errors) == 1, f"{len(errors)} error: lines: {text[-600:]}")
    message = text[text.index("error:"):]
    for word in words:
        expect(word in message, f"the error does not say {word!r}: {message[:400]}")


def succeeded(result: Result) -> None:
    text = result.output
    expect(result.status == 0 and "Traceback" not in text, f"exit status {result.status}: {text[-800:]}")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() and not p.is_symlink() else b"<link>"
            for p in sorted(folder.rglob("*"))}


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """`chattr +i` on `path` for the block (even root cannot write it); `Skipped` where unsupported."""
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise Skipped(f"chattr +i is not possible here ({done.stderr.strip()[:100]})")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)


class Skipped(Exception):
    """The machine cannot set the trial up."""


# ------------------------------------------------------------------ the trials


@dataclass
class Trial:
    name: str
    case: str  # the wording of the case
    run: Callable[[Workspace, Path], None]  # (workspace, a fresh scratch folder) -> raises Failed
    fast: bool = True


TRIALS: list[Trial] = []


def trial(case: str, fast: bool = True):
    def register(fn: Callable[[Workspace, Path], None]) -> Callable[[Workspace, Path], None]:
        TRIALS.append(Trial(fn.__name__, case, fn, fast))
        return fn
    return register


# 1. output folders ------------------------------------------------------------------------------


@trial("`report --out DIR` on a folder with the user's files")
def report_out_users_folder(ws: Workspace, tmp: Path) -> None:
    (tmp / "x" / "sub").mkdir(parents=True)
    (tmp / "x" / "thesis.tex").write_text("keep")
    before = snapshot(tmp / "x")
    one_error_line(cli(ws, "report", "--out", str(tmp / "x")), "not empty", "nothing was changed")
    expect(snapshot(tmp / "x") == before, "the user's folder changed")


@trial("`report --out \"$AURALSAM2_HOME\"` (the data folder) and a folder above it")
def report_out_data_folder(ws: Workspace, tmp: Path) -> None:
    before = sorted(p.name for p in ws.data.iterdir())
    for target in (ws.data, ws.root):
        one_error_line(cli(ws, "report", "--out", str(target)), "data folder")
    expect(sorted(p.name for p in ws.data.iterdir()) == before, "the data folder changed")


@trial("`report --out LINK`, a symlink to the user's folder")
def report_out_symlink(ws: Workspace, tmp: Path) -> None:
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("keep")
    (tmp / "link").symlink_to(tmp / "mine")
    one_error_line(cli(ws, "report", "--out", str(tmp / "link")), "symbolic link")
    expect((tmp / "mine" / "notes.txt").read_text() == "keep", "the link's target changed")


@trial("`report --out DIR` twice: its own earlier report is replaced whole", fast=False)
def report_replaces_its_own(ws: Workspace, tmp: Path) -> None:
    succeeded(cli(ws, "report", "--out", str(tmp / "r")))
    (tmp / "r" / "assets" / "stale.png").write_bytes(b"old")
    succeeded(cli(ws, "report", "--out", str(tmp / "r")))
    expect((tmp / "r" / "index.html").is_file() and not (tmp / "r" / "assets" / "stale.png").exists(),
           "the earlier report's files were not replaced")
    expect(not [p for p in tmp.iterdir() if p.name.startswith(".r.")], "staging folders left beside the report")


@trial("`segment --out DIR` on a folder holding the user's own summary.json")
def segment_out_users_folder(ws: Workspace, tmp: Path) -> None:
    (tmp / "out").mkdir()
    (tmp / "out" / "summary.json").write_text('{"mine": 1}')
    one_error_line(cli(ws, "segment", str(tmp / "any.mp4"), "--checkpoint", str(tmp / "any.ckpt"), "--out",
                       str(tmp / "out")), "not empty")
    expect((tmp / "out" / "summary.json").read_text() == '{"mine": 1}', "the user's summary.json changed")


@trial("`cache --out DIR` / `ingest --out DIR` on a folder with the user's files")
def cache_and_ingest_out_users_folder(ws: Workspace, tmp: Path) -> None:
    (tmp / "x").mkdir()
    (tmp / "x" / "thesis.tex").write_text("keep")
    one_error_line(cli(ws, "cache", "--shards", str(ws.root / "ingest"), "--out", str(tmp / "x"), "--sam2-config",
                       "tiny"), "not empty")
    one_error_line(cli(ws, "ingest", "--dataset", "avss", "--subset", "v1m", "--root",
                       str(ws.root / "world" / "AVSBench"), "--out", str(tmp / "x")), "not empty")
    expect(sorted(p.name for p in (tmp / "x").iterdir()) == ["thesis.tex"], "files were added to the user's folder")


# 2. code in configs and checkpoints ------------------------------------------------------------

PAYLOADS = {  # a SAM2 model config whose image encoder is one of these calls
    "torch.load": {"f": "{tmp}/payload.pt", "weights_only": False},
    "numpy.load": {"file": "{tmp}/payload.npy", "allow_pickle": True},
    "builtins.open": {"file": "{tmp}/ran", "mode": "w"},
    "os.system": {"_args_": ["touch {tmp}/ran"]},
}


@trial("a SAM2 config whose `_target_`s call torch.load / numpy.load / open / os.system (`cache --sam2-config`)")
def sam2_config_payloads(ws: Workspace, tmp: Path) -> None:
    import numpy as np
    import torch
    import yaml

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp}/ran",))

    torch.save({"x": Payload()}, tmp / "payload.pt")
    np.save(tmp / "payload.npy", np.array([Payload()], dtype=object), allow_pickle=True)
    for target, kwargs in PAYLOADS.items():
        encoder = {"_target_": target, **json.loads(json.dumps(kwargs).replace("{tmp}", str(tmp)))}
        evil = tmp / f"evil-{target}.yaml"
        evil.write_text(yaml.safe_dump({"model": {"_target_": "sam2.modeling.sam2_base.SAM2Base",
                                                  "image_encoder": encoder}}))
        result = cli(ws, "cache", "--shards", str(ws.root / "ingest"), "--out", str(tmp / f"c-{target}"),
                     "--sam2-config", str(evil))
        one_error_line(result, target, "refused")
        expect(not (tmp / "ran").exists(), f"the {target} payload ran")


@trial("a pickled checkpoint (`evaluate evil.ckpt`): refused without torch's advice to unpickle it")
def pickled_checkpoint(ws: Workspace, tmp: Path) -> None:
    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp}/ran",))

    torch.save({"model": Payload()}, tmp / "evil.ckpt")
    result = cli(ws, "evaluate", str(tmp / "evil.ckpt"), "--no-tracking")
    one_error_line(result, "evil.ckpt", "refused")
    expect("weights_only" not in result.output, "the message repeats torch's advice to set weights_only=False")
    expect(not (tmp / "ran").exists(), "the payload ran")


# 4. stores --------------------------------------------------------------------------------------


def _data_copy(ws: Workspace, tmp: Path) -> Workspace:
    """The workspace with a data folder of the trial's own (a hard-linked copy of its MLflow store)."""
    copy = Workspace(tmp / "ws", ws.api_url)
    copy.root.mkdir()
    for name in ("cache", "ingest", "world"):
        (copy.root / name).symlink_to(ws.root / name)
    shutil.copytree(ws.data, copy.data, symlinks=True)
    return copy


def _damage_store(db: Path, how: str) -> None:
    import sqlite3

    if how == "truncated":
        db.write_bytes(db.read_bytes()[:20000])
    elif how == "foreign":
        db.write_text("not a database\n")
    else:  # an older schema
        with sqlite3.connect(db) as con:
            con.execute("update alembic_version set version_num = '0584bdc529eb'")


@trial("a truncated, a foreign and an older-schema mlflow.db (`query`; `report` and `train` on one)")
def damaged_mlflow_store(ws: Workspace, tmp: Path) -> None:
    for how, more in (("truncated", ["report"]), ("foreign", []), ("older", ["train"])):
        (tmp / how).mkdir()
        mine = _data_copy(ws, tmp / how)
        _damage_store(mine.data / "mlflow" / "mlflow.db", how)
        commands = {"query": ["query", "select count(*) from runs"], "report": ["report", "--out", str(tmp / how / "r")],
                    "train": ["train", *mine.train_sets("run_name=damaged")]}
        for name in ["query", *more]:
            one_error_line(cli(mine, *commands[name]), "MLflow store", "mlflow.db")


@trial("an immutable MLflow store: `query` works, `train` says it is read-only")
def read_only_mlflow_store(ws: Workspace, tmp: Path) -> None:
    mine = _data_copy(ws, tmp)
    db = mine.data / "mlflow" / "mlflow.db"
    with immutable(db):
        succeeded(cli(mine, "query", "select count(*) from runs"))
        one_error_line(cli(mine, "train", *mine.train_sets("run_name=ro")), "read-only")


@trial("a read-only data folder: `query` and `report --out elsewhere` still work", fast=False)
def read_only_data_folder(ws: Workspace, tmp: Path) -> None:
    mine = _data_copy(ws, tmp)
    with immutable(mine.data / "metrics"), immutable(mine.data / "mlflow" / "mlflow.db"), immutable(mine.data):
        succeeded(cli(mine, "query", "select count(*) from runs"))
        succeeded(cli(mine, "report", "--out", str(tmp / "report")))


@trial("an unwritable Prefect home: the first flow fails in seconds with one line", fast=False)
def unwritable_prefect_home(ws: Workspace, tmp: Path) -> None:
    home = tmp / "prefect"
    home.mkdir()
    with immutable(home):
        result = cli(ws, "ingest", "--dataset", "avss", "--subset", "v1m", "--root", str(ws.root / "world" / "AVSBench"),
                     "--out", str(tmp / "ingest"), fresh=True, PREFECT_HOME=str(home), PREFECT_API_URL=None, timeout=120)
    one_error_line(result, "Prefect")
    expect(result.seconds < 60, f"took {result.seconds:.0f} s")


# 5. paths and names -----------------------------------------------------------------------------


@trial("a data folder whose path holds `%41`, `?`, `#`, a space and non-ASCII: Prefect and MLflow stay in it",
       fast=False)
def special_characters_in_the_data_folder(ws: Workspace, tmp: Path) -> None:
    home = tmp / "a%41 b?c#é"
    # a fresh process with its own Prefect server and database, then a tracked training run
    succeeded(cli(Workspace(ws.root), "ingest", "--dataset", "avss", "--subset", "v1m", "--root",
                  str(ws.root / "world" / "AVSBench"), "--out", str(home / "ingest"), fresh=True,
                  AURALSAM2_HOME=str(home), PREFECT_HOME=None, PREFECT_API_URL=None))
    expect((home / "prefect" / "prefect.db").is_file(), "no Prefect database in the data folder")
    succeeded(cli(Workspace(home.parent), "train", *ws.train_sets("run_name=paths", "train.epochs=1"),
                  AURALSAM2_HOME=str(home)))
    expect((home / "mlflow" / "mlflow.db").is_file(), "no MLflow store in the data folder")
    expect((home / "runs" / "probe" / "paths" / "best.ckpt").is_file(), "no run folder in the data folder")
    stray = [p.name for p in tmp.iterdir() if p != home]
    expect(not stray, f"files outside the data folder: {stray}")


@trial("`--set run_name=../../x` and `--set experiment=a/b`")
def names_that_are_paths(ws: Workspace, tmp: Path) -> None:
    for item in ("run_name=../../x", "experiment=a/b", "runs_dir=../../y"):
        one_error_line(cli(ws, "train", *ws.train_sets(item)), item.split("=")[0])
    expect(not (ws.root / "x").exists() and not (ws.root / "y").exists(), "a run folder was written outside")


# 6. hostile shards and raw trees ----------------------------------------------------------------


def _ingest_copy(ws: Workspace, tmp: Path) -> Path:
    out = tmp / "ingest"
    shutil.copytree(ws.root / "ingest", out)
    return out


def _reseal(tar: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    """Write `tar` with `members` and seal its sidecar again (sha256, size), as a forger would."""
    from auralsam2.utils.files import atomic_write_json, read_json
    from auralsam2.utils.hashing import sha256_file

    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as out:
        for info, data in members:
            out.addfile(info, None if data is None else io.BytesIO(data))
    side = tar.with_suffix(".json")
    record = read_json(side, "sidecar", "")
    record.update(sha256=sha256_file(tar), bytes=tar.stat().st_size)
    atomic_write_json(side, record)


def _members(tar: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(tar) as t:
        return [(m, t.extractfile(m).read()) for m in t.getmembers()]


def _plain(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _hostile_shard(ws: Workspace, tmp: Path, change: Callable[[list, str], list]) -> Result:
    ingest = _ingest_copy(ws, tmp)
    tar = sorted((ingest / "shards").glob("*.tar"))[0]
    members = _members(tar)
    key = members[0][0].name.split(".")[0]
    _reseal(tar, change(members, key))
    return cli(ws, "cache", "--shards", str(ingest), "--out", str(tmp / "cache"), "--sam2-config", "tiny")


@trial("a re-sealed shard with a member named `../../x`; `cache verify` of the unfinished cache; the fix it names")
def shard_traversal_member(ws: Workspace, tmp: Path) -> None:
    result = _hostile_shard(ws, tmp, lambda m, key: [*m, _plain("../../x", b"boom")])
    one_error_line(result, ".tar", "../../x")
    expect(not (tmp.parent / "x").exists(), "a file was written outside")
    verify = cli(ws, "cache", "verify", str(tmp / "cache"))  # the unfinished cache it left
    expect(verify.status in (0, 1) and "Traceback" not in verify.output,
           f"cache verify: exit {verify.status}: {verify.output[-600:]}")
    # the fix the message gives works: ingest writes the shard again (its re-sealed sidecar fools no one)
    succeeded(cli(ws, "ingest", "--dataset", "avss", "--subset", "v1m", "--root", str(ws.root / "world" / "AVSBench"),
                  "--out", str(tmp / "ingest"), "--clips-per-shard", "2"))
    succeeded(cli(ws, "cache", "--shards", str(tmp / "ingest"), "--out", str(tmp / "cache"), "--sam2-config", "tiny"))


@trial("a re-sealed shard with a symlink member")
def shard_symlink_member(ws: Workspace, tmp: Path) -> None:
    def change(members, key):
        link = tarfile.TarInfo(f"{key}.frame09.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        return [*members, (link, None)]

    one_error_line(_hostile_shard(ws, tmp, change), ".tar", "not a plain file")


@trial("a re-sealed shard whose member declares more than a clip's file holds (65 MiB)", fast=False)
def shard_oversized_member(ws: Workspace, tmp: Path) -> None:
    def change(members, key):
        name = next(m.name for m, _ in members if ".frame" in m.name)
        return [(m, d) if m.name != name else _plain(name, bytes(65 << 20)) for m, d in members]

    result = _hostile_shard(ws, tmp, change)
    one_error_line(result, ".tar", "limit")
    expect(result.peak_mb < 2048, f"peak memory {result.peak_mb:.0f} MB")


@trial("a re-sealed shard whose member declares 2 GB (a sparse file)", fast=False)
def shard_sparse_2gb_member(ws: Workspace, tmp: Path) -> None:
    ingest = _ingest_copy(ws, tmp)
    tar = sorted((ingest / "shards").glob("*.tar"))[0]
    members = _members(tar)
    info = tarfile.TarInfo(members[1][0].name)
    info.size = 2 << 30
    with open(tar, "wb") as f:  # the member's data as a hole: 2 GB on paper, nothing on disk
        for m, data in members[:1]:
            f.write(m.tobuf(tarfile.GNU_FORMAT) + data + bytes(-len(data) % 512))
        f.write(info.tobuf(tarfile.GNU_FORMAT))
        f.seek(info.size, os.SEEK_CUR)
        f.write(bytes(1024))
    from auralsam2.utils.files import atomic_write_json, read_json
    from auralsam2.utils.hashing import sha256_file

    side = tar.with_suffix(".json")
    atomic_write_json(side, {**read_json(side, "sidecar", ""), "sha256": sha256_file(tar), "bytes": tar.stat().st_size})
    result = cli(ws, "cache", "--shards", str(ingest), "--out", str(tmp / "cache"), "--sam2-config", "tiny")
    one_error_line(result, ".tar", "limit")
    expect(result.peak_mb < 2048, f"peak memory {result.peak_mb:.0f} MB")


@trial("a re-sealed 100k-member tar bomb, then `cache verify` of the unfinished cache", fast=False)
def shard_tar_bomb(ws: Workspace, tmp: Path) -> None:
    def change(members, key):
        return [*members[:1], *(_plain(f"{key}.f{i:06d}", b"") for i in range(100_000))]

    one_error_line(_hostile_shard(ws, tmp, change), ".tar")
    verify = cli(ws, "cache", "verify", str(tmp / "cache"))
    expect(verify.status in (0, 1) and "Traceback" not in verify.output,
           f"cache verify: exit {verify.status}: {verify.output[-600:]}")


@trial("a re-sealed shard whose sample has no meta.json")
def shard_without_meta(ws: Workspace, tmp: Path) -> None:
    one_error_line(_hostile_shard(ws, tmp, lambda m, key: m[1:]), ".tar", "meta.json")


def _world_copy(ws: Workspace, tmp: Path) -> Path:
    world = tmp / "AVSBench"
    shutil.copytree(ws.root / "world" / "AVSBench", world)
    return world


def _ingest_findings(out: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(out / "ingest_report.parquet").column("kind").to_pylist()


@trial("a metadata row whose uid (300 characters) cannot be a file name")
def uid_too_long(ws: Workspace, tmp: Path) -> None:
    world = _world_copy(ws, tmp)
    uid = "x" * 300
    with open(world / "metadata.csv", "a") as f:
        f.write(f"{uid},{uid}_1000_6000,0,1,tabla,test,v1m\n")
    succeeded(cli(ws, "ingest", "--dataset", "avss", "--subset", "v1m", "--root", str(world), "--out",
                  str(tmp / "ingest")))
    expect("unsafe_path" in _ingest_findings(tmp / "ingest"), "no finding for the clip")
    manifest = json.loads((tmp / "ingest" / "ingest.json").read_text())
    expect(manifest.get("clips_kept", 0) > 0, "the other clips were not ingested")


@trial("a 9000x9000 all-black mask (a small PNG) in the raw tree")
def huge_black_mask(ws: Workspace, tmp: Path) -> None:
    from PIL import Image

    world = _world_copy(ws, tmp)
    mask = sorted(world.glob("v1m/*/labels_rgb/*.png"))[0]
    Image.new("L", (9000, 9000)).save(mask)
    result = cli(ws, "ingest", "--dataset", "avss", "--subset", "v1m", "--root", str(world), "--out",
                 str(tmp / "ingest"))
    succeeded(result)
    expect("mask_size_mismatch" in _ingest_findings(tmp / "ingest"), "no finding for the mask")
    expect(result.peak_mb < 1024 and result.seconds < 60, f"{result.peak_mb:.0f} MB, {result.seconds:.0f} s")


# 7. absurd resources ----------------------------------------------------------------------------


def _checkpoint(ws: Workspace) -> Path:
    return ws.root / "base.ckpt"


@trial("a checkpoint whose stored fuser_config says dim 65536 (weights re-sealed)")
def checkpoint_asks_for_a_huge_model(ws: Workspace, tmp: Path) -> None:
    import yaml

    from auralsam2.checkpoints import read_weights
    from auralsam2.utils.files import atomic_torch_save

    payload = read_weights(_checkpoint(ws))
    stored = {**payload, "fuser_config": {**payload["fuser_config"], "dim": 65536}}
    atomic_torch_save(stored, tmp / "stored.ckpt")
    config = yaml.safe_load(payload["extra"]["config_yaml"])
    config["model"]["fuser"]["dim"] = 65536
    embedded = {**payload, "extra": {**payload["extra"], "config_yaml": yaml.safe_dump(config)}}
    atomic_torch_save(embedded, tmp / "embedded.ckpt")
    for name in ("stored.ckpt", "embedded.ckpt"):
        result = cli(ws, "evaluate", str(tmp / name), "--no-tracking", "--split", "test")
        one_error_line(result, "parameters")
        expect(result.peak_mb < 2048, f"{name}: peak memory {result.peak_mb:.0f} MB")


@trial("a billion-laughs YAML config")
def billion_laughs_config(ws: Workspace, tmp: Path) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    (tmp / "laughs.yaml").write_text("\n".join(lines) + "\n")
    result = cli(ws, "train", str(tmp / "laughs.yaml"))
    one_error_line(result, "laughs.yaml", "aliases")
    expect(result.peak_mb < 2048, f"peak memory {result.peak_mb:.0f} MB")


@trial("`--set optim.lr=inf` and `--set train.clips_per_step=1000000000`")
def absurd_training_settings(ws: Workspace, tmp: Path) -> None:
    one_error_line(cli(ws, "train", *ws.train_sets("run_name=lr", "optim.lr=inf")), "optim.lr")
    result = cli(ws, "train", *ws.train_sets("run_name=cps", "train.clips_per_step=1000000000"))
    one_error_line(result, "clips_per_step")


# ------------------------------------------------------------------ the sweep


@dataclass
class Verdict:
    name: str
    case: str
    verdict: str
    seconds: float
    detail: str = ""


def run_trials(ws: Workspace, scratch: Path, names: list[str] | None = None, fast_only: bool = False,
               log: Callable[[str], None] = print) -> list[Verdict]:
    _preimport()
    out = []
    for t in TRIALS:
        if (names and t.name not in names) or (fast_only and not t.fast):
            continue
        tmp = scratch / t.name
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        started = time.monotonic()
        try:
            t.run(ws, tmp)
            verdict, detail = "ok", ""
        except Failed as err:
            verdict, detail = "failed", str(err)
        except Skipped as err:
            verdict, detail = "skipped", str(err)
        seconds = time.monotonic() - started
        out.append(Verdict(t.name, t.case, verdict, round(seconds, 1), detail[:800]))
        log(f"{t.name}: {verdict} ({seconds:.1f} s){' ' + detail[:300] if detail else ''}")
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def markdown(verdicts: list[Verdict]) -> str:
    lines = ["| trial | case | verdict | s |", "|---|---|---|---:|"]
    lines += [f"| `{v.name}` | {v.case} | {v.verdict} | {v.seconds:.1f} |" for v in verdicts]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path)
    parser.add_argument("--only", help="Comma-separated trial names (default: all).")
    parser.add_argument("--fast", action="store_true", help="Only the trials `make test` runs.")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    home = (args.home or Path(tempfile.mkdtemp(prefix="auralsam2-probe-"))).resolve()
    home.mkdir(parents=True, exist_ok=True)
    with prefect_server(home) as url:
        ws = build_workspace(home / "workspace", url)
        ws.use()
        verdicts = run_trials(ws, home / "scratch", args.only.split(",") if args.only else None, args.fast)
    print(markdown(verdicts))
    if args.json:
        args.json.write_text(json.dumps([asdict(v) for v in verdicts], indent=1))
    return 0 if all(v.verdict != "failed" for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
