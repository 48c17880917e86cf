"""Fault injection over every artifact the pipeline writes: damage one file, run the real command
that reads it, count the verdict.

A *workspace* is built once with the real CLI (synthetic world -> ingest -> tiny-SAM2 cache ->
training -> evaluation -> metrics Parquet) under one folder. Each *trial* hard-links a copy of it
(writers replace files by rename, so the pristine copy is never touched; the damaged file is a new
inode), applies one fault to one file, and runs one consumer command in a forked child (everything
heavy is imported once in the parent), with its stdout/stderr captured. The verdict:

* `detected`  exit 1 with an `error:` line (or `cache verify`'s report) naming the file;
* `unnamed`   exit 1, but the message does not name the damaged file;
* `repaired`  exit 0, the output identical to the undamaged run's, and the damaged file rewritten;
* `harmless`  exit 0 and the output identical (the byte was padding, or never read);
* `silent`    exit 0 and the output differs: silent corruption;
* `crash`     killed by a signal, any other exit status, or past the time limit;
* `traceback` a Python traceback on the terminal.

Only the first four are acceptable. Faults: a flipped byte (a third of them in the first KiB, a
third in the last KiB: headers and footers are where metadata lives, a third anywhere), truncation
at a random length, a zero-filled 4 KiB block, an empty file, a missing file.

`python -m bench.fault_injection [--quick] [--trials N] [--seed S] [--json OUT]`; `bench/bench_faults.py`
runs the seeded sweep for `make bench` and records the table.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from auralsam2.config import TINY_MODEL_OVERRIDES

REPO = Path(__file__).resolve().parents[1]
FAULTS = ("flip", "truncate", "zero", "empty", "missing")
GOOD = ("detected", "repaired", "harmless")
BAD = ("unnamed", "silent", "crash", "traceback")
EPOCH = "1767225600"  # SOURCE_DATE_EPOCH: cache timestamps are fixed, so outputs compare byte for byte

TINY_MODEL = [*TINY_MODEL_OVERRIDES, "train.progress=false", "eval.progress=false", "train.threads=1",
              "train.epochs=1", "train.log_every_steps=2"]


# ------------------------------------------------------------------ the workspace


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "flows", *args], env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"auralsam2 {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def environment(home: Path) -> dict[str, str]:
    """The variables every command of a sweep runs with (set before anything imports Prefect)."""
    return {
        "AURALSAM2_HOME": str(home / "data"), "PREFECT_HOME": str(home / "prefect"),
        "SOURCE_DATE_EPOCH": EPOCH, "OMP_NUM_THREADS": "1", "AURALSAM2_DEBUG": "0",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }


def build_workspace(ws: Path, env: dict[str, str]) -> None:
    """The artifacts every trial damages one of, written by the real commands (about 1-2 minutes)."""
    if (ws / ".complete").is_file():
        return
    shutil.rmtree(ws, ignore_errors=True)
    ws.mkdir(parents=True)
    # a PREFECT_API_URL in `env` (the sweep's own server) saves each command an ephemeral server start
    full = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | env
    _cli(["synth", "--out", str(ws / "world"), "--clips", "4", "--size", "64"], full, REPO)
    _cli(["ingest", "--dataset", "avss", "--subset", "v1m", "--root", str(ws / "world" / "AVSBench"),
          "--out", str(ws / "ingest"), "--clips-per-shard", "2"], full, REPO)
    _cli(["cache", "--shards", str(ws / "ingest"), "--out", str(ws / "cache"), "--sam2-config", "tiny"], full, REPO)
    _cli(["ingest", "--dataset", "refavs", "--root", str(ws / "world" / "REFAVS"), "--out", str(ws / "ingest_refavs"),
          "--clips-per-shard", "4"], full, REPO)
    text = REPO / "auralsam2" / "assets" / "text_tiny_synth"
    _cli(["cache", "--shards", str(ws / "ingest_refavs"), "--out", str(ws / "cache_refavs"), "--sam2-config", "tiny",
          "--text-encoder", str(text)], full, REPO)
    sets = [f"data.cache={ws / 'cache'}", "data.dataset=avss", "experiment=faults", "run_name=faults",
            f"runs_dir={ws / 'runs'}", "eval.splits=[test]", *TINY_MODEL]
    _cli(["train", "--no-tracking", *[x for s in sets for x in ("--set", s)]], full, REPO)
    best = next((ws / "runs").glob("**/best.ckpt"))
    _cli(["evaluate", str(best), "--no-tracking", "--split", "test"], full, REPO)
    # a one-row grid: the ablation summary Parquet (and its .sha256) the `ablation_summary` view reads
    base = ws / "ablate.yaml"
    base.write_text(f"experiment: faults-ablate\ndata:\n  dataset: avss\n  cache: {ws / 'cache'}\n"
                    f"runs_dir: {ws / 'runs_ablate'}\neval:\n  splits: [test]\n")
    _cli(["ablate", str(base), "--rows", "visual_only", "--split", "test",
          *[x for s in TINY_MODEL for x in ("--set", s)]], full, REPO)
    (ws / ".complete").write_text("ok\n")


def artifacts(ws: Path) -> dict[str, list[Path]]:
    """File kind -> the workspace's files of that kind (relative paths)."""
    def rel(paths):
        return sorted(p.relative_to(ws) for p in paths if p.is_file())

    metrics = ws / "data" / "metrics"
    runs = Path(_best(ws)).parent
    return {
        "shard_tar": rel((ws / "ingest" / "shards").glob("*.tar")),
        "shard_sidecar": rel((ws / "ingest" / "shards").glob("*.json")),
        "ingest_manifest": rel([ws / "ingest" / "manifest.parquet"]),
        "ingest_json": rel([ws / "ingest" / "ingest.json"]),
        "ingest_report": rel([ws / "ingest" / "ingest_report.parquet"]),
        "features_arrow": rel((ws / "cache" / "features").glob("*.arrow")),
        "audio_arrow": rel((ws / "cache" / "audio").glob("*.arrow")),
        "text_arrow": rel((ws / "cache_refavs" / "text").glob("*.arrow")),
        "cache_index": rel([ws / "cache" / "index.parquet"]),
        "cache_clips": rel([ws / "cache" / "clips.parquet"]),
        "cache_manifest": rel([ws / "cache" / "manifest.parquet"]),
        "cache_json": rel([ws / "cache" / "cache.json"]),
        "checkpoint": rel([runs / "best.ckpt"]),
        "training_state": rel([runs / "last.ckpt"]),
        "metrics_parquet": rel((metrics / "clip_metrics").glob("*/*.parquet")),
        "metrics_checksum": rel((metrics / "clip_metrics").glob("*/*.sha256")),
        "ablation_summary": rel((metrics / "ablation_summary").glob("*/*.parquet")),
        "ablation_checksum": rel((metrics / "ablation_summary").glob("*/*.sha256")),
    }


# ------------------------------------------------------------------ consumers


@dataclass(frozen=True)
class Consumer:
    """A real command that reads a file kind, and how its result is compared."""

    name: str
    argv: Callable[[Path], list[str]]
    digest: Callable[[Path, str], str]  # (trial workspace, stdout) -> what must not change
    rebuilds: bool = False              # the command rewrites what it finds damaged


# fields of a record that differ between two runs with identical outputs (timings, what this run did)
RUN_FIELDS = {"seconds", "wall_s", "record_sha256", "shards_written", "shards_skipped", "shards_built"}


def file_digest(path: Path) -> bytes:
    """A file's sha256; a JSON record's without its `RUN_FIELDS`."""
    data = path.read_bytes()
    if path.suffix == ".json":
        try:
            record = json.loads(data)
        except ValueError:
            record = None
        if isinstance(record, dict):
            data = json.dumps({k: v for k, v in record.items() if k not in RUN_FIELDS}, sort_keys=True).encode()
    return hashlib.sha256(data).digest()


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != ".lock":
            digest.update(str(path.relative_to(root)).encode() + b"\0" + file_digest(path))
    return digest.hexdigest()


def _reader_digest(cache: Path) -> str:
    """Everything a training or evaluation step reads from a cache, decoded, hashed."""
    import torch

    from auralsam2.utils.hashing import payload_sha256
    from feature_cache.reader import CacheReader

    reader = CacheReader(cache)
    values: dict[str, object] = {}
    for key in reader.keys():
        for view in range(reader.views(key)):
            features = reader.clip(key, view)
            values[f"{key}/{view}"] = {
                name: (value if isinstance(value, torch.Tensor | dict | list | tuple | int | float | str | type(None))
                       else repr(value)) for name, value in vars(features).items() if name != "clip"}
        values[f"{key}/record"] = reader.clip_record(key).to_json()
        for expression in reader.clip_record(key).expressions:
            values[f"{key}/text/{expression.uid}"] = reader.text(expression.uid)
    return payload_sha256(values)


def _metrics_digest(ws: Path) -> str:
    import pyarrow.parquet as pq

    rows = []
    for path in sorted((ws / "data" / "metrics" / "clip_metrics").glob("*/*.parquet")):
        rows += pq.read_table(path).to_pylist()
    return hashlib.sha256(json.dumps(sorted(rows, key=json.dumps), default=str).encode()).hexdigest()


def _best(ws: Path) -> str:
    return str(ws / "runs" / "faults" / "faults" / "best.ckpt")  # experiment / run_name of build_workspace


CONSUMERS = {
    "cache_build": Consumer("cache_build", lambda ws: ["cache", "--shards", str(ws / "ingest"), "--out",
                                                       str(ws / "cache_new"), "--sam2-config", "tiny"],
                            lambda ws, out: _tree_digest(ws / "cache_new")),
    "ingest_rerun": Consumer("ingest_rerun", lambda ws: ["ingest", "--dataset", "avss", "--subset", "v1m", "--root",
                                                         str(ws / "world" / "AVSBench"), "--out", str(ws / "ingest"),
                                                         "--clips-per-shard", "2"],
                             lambda ws, out: _tree_digest(ws / "ingest"), rebuilds=True),
    "cache_verify": Consumer("cache_verify", lambda ws: ["cache", "verify", str(ws / "cache")],
                             lambda ws, out: _reader_digest(ws / "cache")),
    "cache_verify_refavs": Consumer("cache_verify_refavs", lambda ws: ["cache", "verify", str(ws / "cache_refavs")],
                                    lambda ws, out: _reader_digest(ws / "cache_refavs")),
    "evaluate": Consumer("evaluate", lambda ws: ["evaluate", _best(ws), "--no-tracking", "--split", "test"],
                         lambda ws, out: _metrics_digest(ws)),
    "query": Consumer("query", lambda ws: ["query", "--no-refresh-runs", "--csv",
                                           "select * from clip_metrics order by all"],  # a total order: two runs' rows
                      lambda ws, out: hashlib.sha256(out.encode()).hexdigest()),
    "query_ablation": Consumer("query_ablation", lambda ws: ["query", "--no-refresh-runs", "--csv",
                                                             "select * from ablation_summary order by all"],
                               lambda ws, out: hashlib.sha256(out.encode()).hexdigest()),
}

# file kind -> the consumers that read it
READERS = {
    "shard_tar": ["cache_build", "ingest_rerun"],
    "shard_sidecar": ["cache_build", "ingest_rerun"],
    "ingest_manifest": ["cache_build", "ingest_rerun"],
    "ingest_json": ["cache_build", "ingest_rerun"],
    "ingest_report": ["ingest_rerun"],
    "features_arrow": ["cache_verify", "evaluate"],
    "audio_arrow": ["cache_verify", "evaluate"],
    "text_arrow": ["cache_verify_refavs"],
    "cache_index": ["cache_verify", "evaluate"],
    "cache_clips": ["cache_verify", "evaluate"],
    "cache_manifest": ["cache_verify", "evaluate"],
    "cache_json": ["cache_verify", "evaluate"],
    "checkpoint": ["evaluate"],
    "metrics_parquet": ["query"],
    "metrics_checksum": ["query"],
    "ablation_summary": ["query_ablation"],
    "ablation_checksum": ["query_ablation"],
}


# ------------------------------------------------------------------ faults and trials


def apply_fault(path: Path, fault: str, rng: random.Random) -> str:
    """Damage `path` in place (as a new inode: the hard-linked original stays intact); returns what was done."""
    data = bytearray(path.read_bytes())
    path.unlink()
    n = len(data)
    if fault == "missing":
        return "removed"
    if fault == "empty" or n == 0:
        path.write_bytes(b"")
        return "emptied"
    if fault == "flip":
        region = rng.choice(("head", "tail", "any"))
        lo, hi = {"head": (0, min(n, 1024)), "tail": (max(0, n - 1024), n), "any": (0, n)}[region]
        at = rng.randrange(lo, hi)
        mask = rng.randrange(1, 256)
        data[at] ^= mask
        detail = f"byte {at} of {n} ({region}) ^ {mask:#04x}"
    elif fault == "truncate":
        cut = rng.randrange(0, n)
        data = data[:cut]
        detail = f"to {cut} of {n} bytes"
    elif fault == "zero":
        at = rng.randrange(0, n)
        end = min(n, at + 4096)
        data[at:end] = bytes(end - at)
        detail = f"bytes {at}-{end} of {n}"
    else:
        raise ValueError(fault)
    path.write_bytes(bytes(data))
    return detail


@dataclass
class Trial:
    kind: str
    file: str
    fault: str
    detail: str
    consumer: str
    verdict: str = ""
    exit: int | None = None
    seconds: float = 0.0
    message: str = ""


def _names(file: str) -> set[str]:
    """Names a message may use for `file`: itself, or the file it is the checksum/sidecar of."""
    path = Path(file)
    return {path.name, path.name.removesuffix(".sha256"), path.stem + ".tar" if path.suffix == ".json" else path.name}


def _link_copy(src: Path, dst: Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, copy_function=os.link, symlinks=True)


def _child(argv: list[str], ws: Path, consumer: Consumer, out: Path, err: Path, digest: Path) -> None:
    code = 3
    try:
        os.setpgid(0, 0)
        fd_out = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        fd_err = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd_out, 1)
        os.dup2(fd_err, 2)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        sys.argv = ["auralsam2", *argv]
        from flows.cli import main

        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code == 0:
            sys.stdout.flush()
            digest.write_text(consumer.digest(ws, out.read_text(errors="replace")))
    except BaseException:  # noqa: BLE001 (an escaped exception is this trial's verdict)
        import traceback

        traceback.print_exc()
        code = 3
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def run_consumer(consumer: Consumer, ws: Path, scratch: Path, timeout: float) -> tuple[int | None, str, str, str | None, float]:
    """(exit status or None when killed, stdout, stderr, output digest, seconds) of one forked run."""
    out, err, digest = scratch / "stdout", scratch / "stderr", scratch / "digest"
    digest.unlink(missing_ok=True)
    argv = consumer.argv(ws)
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(argv, ws, consumer, out, err, digest)
    status = None
    while time.monotonic() - started < timeout:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(raw)
            break
        time.sleep(0.02)
    else:
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    try:  # anything the command started (a server, workers) goes with it
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    seconds = time.monotonic() - started
    return (status, out.read_text(errors="replace"), err.read_text(errors="replace"),
            digest.read_text() if digest.is_file() else None, seconds)


def judge(trial: Trial, status: int | None, stdout: str, stderr: str, digest: str | None, baseline: str,
          repaired: bool) -> str:
    text = stdout + stderr
    if "Traceback (most recent call last)" in text:
        return "traceback"
    if status is None or status not in (0, 1):
        return "crash"
    if status == 1:
        lines = [line for line in text.splitlines() if line.startswith("error:") or line.startswith("  ")]
        naming = [line for line in lines if any(name in line for name in _names(trial.file))]
        trial.message = (naming or lines or [""])[0].strip()
        return "detected" if naming else "unnamed"
    if digest != baseline:
        return "silent"
    return "repaired" if repaired else "harmless"


@dataclass
class Sweep:
    trials: list[Trial] = field(default_factory=list)
    seconds: float = 0.0

    def counts(self) -> dict[str, Counter]:
        table: dict[str, Counter] = {}
        for t in self.trials:
            table.setdefault(t.kind, Counter())[t.verdict] += 1
        return table

    def totals(self) -> Counter:
        return Counter(t.verdict for t in self.trials)

    def bad(self) -> list[Trial]:
        return [t for t in self.trials if t.verdict in BAD]

    def markdown(self) -> str:
        verdicts = [*GOOD, *BAD]
        lines = ["| file kind | trials | " + " | ".join(verdicts) + " |", "|---|---:|" + "---:|" * len(verdicts)]
        for kind, counter in sorted(self.counts().items()):
            lines.append(f"| {kind} | {sum(counter.values())} | " + " | ".join(str(counter[v]) for v in verdicts) + " |")
        total = self.totals()
        lines.append(f"| **all** | **{sum(total.values())}** | " + " | ".join(f"**{total[v]}**" for v in verdicts) + " |")
        return "\n".join(lines)


def plan_trials(files: dict[str, list[Path]], per_kind: int, rng: random.Random,
                kinds: list[str] | None = None) -> list[tuple[str, Path, str, str]]:
    """(kind, file, fault, consumer) for each trial: the faults in turn for the first five trials of a
    (kind, consumer) pair (starting at a different fault for each pair, so that even one trial per
    pair covers every fault across the pairs), then seeded draws, flips twice as likely (they are the
    hardest to see)."""
    plan = []
    pair = 0
    for kind in kinds or sorted(READERS):
        paths = files.get(kind) or []
        if not paths:
            continue
        for consumer in READERS[kind]:
            chosen = [FAULTS[(pair + i) % len(FAULTS)] for i in range(min(per_kind, len(FAULTS)))]
            weighted = ["flip", "flip", "truncate", "zero", "empty", "missing"]
            chosen += [rng.choice(weighted) for _ in range(max(0, per_kind - len(FAULTS)))]
            plan += [(kind, rng.choice(paths), fault, consumer) for fault in chosen]
            pair += 1
    return plan


def sweep(home: Path, per_kind: int = 5, seed: int = 0, kinds: list[str] | None = None, timeout: float = 180.0,
          log: Callable[[str], None] = print) -> Sweep:
    """Build (or reuse) the workspace under `home`, then run the trials; `per_kind` trials per (file
    kind, consumer) pair, the first five one of each fault."""
    started = time.monotonic()
    pristine = home / "workspace"
    trial_ws = home / "trial"  # one fixed path: outputs that record paths compare equal
    os.environ.update({**environment(home), "AURALSAM2_HOME": str(trial_ws / "data")})
    with prefect_server(home) as url:  # serves the build's commands and every trial (forked: our environment)
        os.environ["PREFECT_API_URL"] = url
        if not (pristine / ".complete").is_file():
            # built where every trial runs, then kept aside: the paths recorded inside (the checkpoint's
            # config, cache.json's ingest, ingest.json's root) are the trial's own
            shutil.rmtree(trial_ws, ignore_errors=True)
            build_workspace(trial_ws, {**environment(home), "AURALSAM2_HOME": str(trial_ws / "data"),
                                       "PREFECT_API_URL": url})
            shutil.rmtree(pristine, ignore_errors=True)
            trial_ws.rename(pristine)
        files = artifacts(pristine)
        rng = random.Random(seed)
        plan = plan_trials(files, per_kind, rng, kinds)
        _preimport()
        return _run_trials(plan, pristine, trial_ws, home / "scratch", timeout, log, started, rng)


@contextlib.contextmanager
def prefect_server(home: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """One local Prefect server for a whole sweep (each command would otherwise start its own), up
    while the block runs; yields its API URL. `env`: the server's environment (default ours)."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    with open(home / "prefect-server.log", "w") as log:
        server = subprocess.Popen([str(Path(sys.executable).with_name("prefect")), "server", "start", "--host",
                                   "127.0.0.1", "--port", str(port), "--no-ui"], stdout=log, stderr=subprocess.STDOUT,
                                  env={**(os.environ if env is None else env)}, start_new_session=True)
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError(f"the Prefect server exited: see {home / 'prefect-server.log'}") from None
                time.sleep(0.2)
        else:
            raise RuntimeError(f"the Prefect server never answered at {url}: see {home / 'prefect-server.log'}")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


def _run_trials(plan: list[tuple[str, Path, str, str]], pristine: Path, trial_ws: Path, scratch: Path,
                timeout: float, log: Callable[[str], None], started: float, rng: random.Random) -> Sweep:
    scratch.mkdir(exist_ok=True)
    baselines: dict[str, str] = {}
    result = Sweep()
    for i, (kind, rel, fault, consumer_name) in enumerate(plan):
        consumer = CONSUMERS[consumer_name]
        if consumer_name not in baselines:
            _link_copy(pristine, trial_ws)
            status, out, err, digest, _ = run_consumer(consumer, trial_ws, scratch, timeout)
            if status != 0 or digest is None:
                raise RuntimeError(f"consumer {consumer_name} fails on the undamaged workspace ({status}):\n{out}\n{err}")
            baselines[consumer_name] = digest
        _link_copy(pristine, trial_ws)
        detail = apply_fault(trial_ws / rel, fault, rng)
        trial = Trial(kind, str(rel), fault, detail, consumer_name)
        status, out, err, digest, trial.seconds = run_consumer(consumer, trial_ws, scratch, timeout)
        trial.exit = status
        repaired = (consumer.rebuilds and (trial_ws / rel).is_file()
                    and file_digest(trial_ws / rel) == file_digest(pristine / rel))
        trial.verdict = judge(trial, status, out, err, digest, baselines[consumer_name], repaired)
        if trial.verdict in BAD:
            trial.message = (out + err)[-1500:]
        result.trials.append(trial)
        log(f"[{i + 1}/{len(plan)}] {kind} {fault} ({detail}) -> {consumer_name}: {trial.verdict} "
            f"({trial.seconds:.1f} s){' ' + trial.message[:160] if trial.verdict != 'harmless' else ''}")
    shutil.rmtree(trial_ws, ignore_errors=True)
    result.seconds = time.monotonic() - started
    return result


def _preimport() -> None:
    """What the consumers import, loaded once before the forks (each child starts warm)."""
    import duckdb  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import torch

    torch.set_num_threads(1)
    import dashboards.views  # noqa: F401
    import feature_cache.build  # noqa: F401
    import feature_cache.reader  # noqa: F401
    import feature_cache.verify  # noqa: F401
    import flows.cache  # noqa: F401
    import flows.cli  # noqa: F401
    import flows.evaluate  # noqa: F401
    import flows.ingest  # noqa: F401
    import flows.train  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, help="Folder for the workspace and trials (default: a temp folder).")
    parser.add_argument("--per-kind", type=int, default=5, help="Trials per (file kind, consumer); >= 5 covers each fault.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", help="Comma-separated file kinds (default: all).")
    parser.add_argument("--json", type=Path, help="Write every trial here.")
    args = parser.parse_args(argv)
    home = args.home or Path(tempfile.mkdtemp(prefix="auralsam2-faults-"))
    home.mkdir(parents=True, exist_ok=True)
    result = sweep(home.resolve(), args.per_kind, args.seed, args.kinds.split(",") if args.kinds else None)
    print(result.markdown())
    print(f"{len(result.trials)} trials in {result.seconds:.0f} s; {len(result.bad())} not acceptable")
    if args.json:
        args.json.write_text(json.dumps({"seconds": result.seconds, "trials": [asdict(t) for t in result.trials]},
                                        indent=1))
    return 1 if result.bad() else 0


if __name__ == "__main__":
    sys.exit(main())
