"""Save and restore time of a multi-process JAX job writing one directory, 1/2/4 processes.

Each configuration starts N real processes on loopback (keras.distribution
.initialize, gloo collectives, DataParallel over every process's CPU device),
trains a dense model with Adam for `--saves` backups (every `--every` steps,
background writer), and reports, per save:

- stall: how long the training thread of each process is blocked (the worst
  process; the job runs at the pace of its slowest member);
- commit: on process 0, from its snapshot to the manifest commit, which
  includes waiting for every other process's part;
- bytes: what the save wrote, weights (process 0) + every process's part;
- throughput: bytes / commit time;
- restore: `keras_resume.restore` of the newest backup, on every process.

`--layout model` trains with `ModelParallel` instead: every Dense kernel and
bias is split across the processes (a 1 x N mesh), so each process writes
its own shards (process 0: its shards and the replicated variables) and a
restore reads on each process only its own shards' regions.

    python benchmarks/scaling.py --params 25e6 --nprocs 1 2 4 --json benchmarks/scaling.json
    python benchmarks/scaling.py --params 25e6 --nprocs 1 2 4 --layout model

One process mode (`--worker`) is what the launcher starts; do not call it directly.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {1e6: (512, 4), 25e6: (2048, 6), 100e6: (4096, 6)}


def worker(args) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import keras
    import numpy as np

    sys.path.insert(0, str(ROOT))
    import keras_resume as kr
    from keras_resume.directory import CheckpointDirectory

    n, i = int(os.environ["KR_N"]), int(os.environ["KR_I"])
    keras.distribution.initialize(
        job_addresses=os.environ["KR_ADDR"], num_processes=n, process_id=i
    )
    if args.layout == "model":
        mesh = keras.distribution.DeviceMesh((1, n), ("batch", "model"), jax.devices())
        layout = keras.distribution.LayoutMap(mesh)
        layout[".*/kernel"] = (None, "model")
        layout[".*/bias"] = ("model",)
        distribution = keras.distribution.ModelParallel(layout_map=layout, batch_dim_name="batch")
        batch, seed = 8, 0  # one model replica: every process feeds the same whole batch
    else:
        distribution = keras.distribution.DataParallel(devices=jax.devices())
        batch, seed = 8 * n, i  # 8 rows per process
    keras.distribution.set_distribution(distribution)
    keras.utils.set_random_seed(0)
    width, depth = SHAPES[args.params]
    layers = [keras.Input((width,))] + [keras.layers.Dense(width) for _ in range(depth)]
    model = keras.Sequential(layers)
    model.compile(optimizer="adam", loss="mse")
    import tensorflow as tf

    x = np.random.RandomState(seed).normal(size=(8 * args.every * args.saves, width))
    ds = tf.data.Dataset.from_tensor_slices((x.astype("float32"),) * 2).batch(8)

    from stall import timed  # benchmarks/stall.py, beside this script

    stalls, commits = [], []
    backup = kr.StepBackup(args.dir, every_n_steps=args.every, keep=1)
    timed(backup, "_save", stalls)
    timed(CheckpointDirectory, "write", commits)  # every directory object of this process
    start = time.perf_counter()
    model.fit(ds, epochs=1, verbose=0, callbacks=[backup, kr.RngCapture(args.dir)])
    fit_s = time.perf_counter() - start
    entry = CheckpointDirectory(args.dir).select("latest", verify=False)
    files = {f["path"]: f["size"] for f in entry["files"]}
    restore = []
    for _ in range(2):
        start = time.perf_counter()
        kr.restore(model, args.dir)
        restore.append(time.perf_counter() - start)
    out = {
        "process": i,
        "nprocs": n,
        "global_batch": batch,
        "fit_s": fit_s,
        "stalls": stalls,
        "commits": commits,
        "bytes": sum(files.values()),
        "part_bytes": sum(v for k, v in files.items() if "/" in k),
        "restore_s": min(restore),
    }
    Path(f"{args.out}-{i}.json").write_text(json.dumps(out))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(params: float, n: int, every: int, saves: int, layout: str, tmp: Path) -> dict:
    env = dict(os.environ, KERAS_BACKEND="jax", KR_N=str(n), KR_ADDR=f"127.0.0.1:{free_port()}")
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    run_dir, out = tmp / f"run-{n}", tmp / f"out-{n}"
    cmd = [sys.executable, __file__, "--worker", "--params", str(params), "--every", str(every)]
    cmd += ["--saves", str(saves), "--layout", layout, "--dir", str(run_dir), "--out", str(out)]
    procs = [
        subprocess.Popen(cmd, env=dict(env, KR_I=str(i)), stderr=subprocess.DEVNULL)
        for i in range(n)
    ]
    for p in procs:
        if p.wait(timeout=1800) != 0:
            raise RuntimeError(f"a process of the {n}-process job failed ({p.returncode})")
    results = [json.loads(Path(f"{out}-{i}.json").read_text()) for i in range(n)]
    first = results[0]
    commit = statistics.median(first["commits"])
    worst_stall = [max(r["stalls"][k] for r in results) for k in range(len(first["stalls"]))]
    return {
        "params": params,
        "layout": layout,
        "nprocs": n,
        "saves": len(first["commits"]),
        "stall_s": round(statistics.median(worst_stall), 4),
        "commit_s": round(commit, 4),
        "bytes_per_save": first["bytes"],
        "part_bytes_per_save": first["part_bytes"],
        "throughput_mb_s": round(first["bytes"] / commit / 1e6, 1),
        "restore_s": round(max(r["restore_s"] for r in results), 4),
        "fit_s": round(max(r["fit_s"] for r in results), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--params", type=float, default=25e6, choices=sorted(SHAPES))
    parser.add_argument("--nprocs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--saves", type=int, default=4)
    parser.add_argument("--layout", default="data", choices=["data", "model"])
    parser.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        for n in args.nprocs:
            rows.append(run(args.params, n, args.every, args.saves, args.layout, Path(tmp)))
            r = rows[-1]
            print(
                f"{n} process(es): stall {r['stall_s']:.3f} s, commit {r['commit_s']:.3f} s, "
                f"{r['bytes_per_save'] / 1e6:.1f} MB a save ({r['part_bytes_per_save'] / 1e6:.1f} "
                f"MB of parts), {r['throughput_mb_s']} MB/s, restore {r['restore_s']:.3f} s",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
