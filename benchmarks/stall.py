"""How long each checkpointing callback blocks training, side by side in one process.

One model per size (a dense stack with Adam), the same data, every contender in
turn: no checkpointing, keras_resume (StepBackup + RngCapture), Keras
BackupAndRestore(save_freq=N) and ModelCheckpoint(save_weights_only=True,
save_freq=N). Figures: stall per save (time inside the save hook), fit wall time
versus no checkpointing, restore time versus `model.load_weights`, bytes on disk
versus raw state bytes, and the floor: a bare host copy of every variable.

    python benchmarks/stall.py --params 1e6 25e6 --every 20 --saves 5 --json stall.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_resume as kr  # noqa: E402

SHAPES = {1e6: (512, 4), 25e6: (2048, 6), 100e6: (4096, 6)}  # width, depth
BATCH = 32


def build(params: float):
    width, depth = SHAPES[params]
    keras.utils.set_random_seed(0)
    layers = [keras.Input((width,))]
    layers += [keras.layers.Dense(width, activation="relu") for _ in range(depth - 1)]
    layers += [keras.layers.Dense(width)]
    model = keras.Sequential(layers)
    model.compile(optimizer="adam", loss="mse")
    return model


def state_variables(model):
    return model.weights + model.optimizer.variables


def host_copy_seconds(model, repeats=3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        [np.array(v.numpy()) for v in state_variables(model)]
        times.append(time.perf_counter() - start)
    return min(times)


def timed(obj, name, sink):
    """Wraps `obj.name` so that each call's duration is appended to `sink`."""
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            sink.append(time.perf_counter() - start)

    setattr(obj, name, wrapper)


def contender(name, directory: Path, every: int, stalls: list):
    if name == "none":
        return []
    if name == "keras_resume":
        backup = kr.StepBackup(directory, every_n_steps=every, keep=1)
        timed(backup, "_save", stalls)
        return [backup, kr.RngCapture(directory)]
    if name == "BackupAndRestore":
        callback = keras.callbacks.BackupAndRestore(
            str(directory), save_freq=every, delete_checkpoint=False
        )
    else:
        callback = keras.callbacks.ModelCheckpoint(
            str(directory / "model.weights.h5"), save_weights_only=True, save_freq=every
        )
    timed(callback, "_save_model", stalls)
    return [callback]


def disk_bytes(directory: Path) -> int:
    return sum(
        p.stat().st_size
        for p in directory.rglob("*")
        if p.is_file() and p.name != ".lock" and "keras-resume-best" not in p.name
    )


def run_size(params: float, every: int, saves: int, workdir: Path) -> list[dict]:
    width, _ = SHAPES[params]
    steps = every * saves
    x = np.random.RandomState(0).normal(size=(steps * BATCH, width)).astype("float32")
    rows = []
    model = build(params)
    model.fit(x[:BATCH], x[:BATCH], batch_size=BATCH, epochs=1, verbose=0)  # build and trace
    raw = sum(np.array(v.numpy()).nbytes for v in state_variables(model))
    floor = host_copy_seconds(model)
    # "none" runs first and last: the baseline is the faster of the two, so a
    # warm-up or a noisy neighbour does not flatter the contenders.
    for name in ("none", "keras_resume", "BackupAndRestore", "ModelCheckpoint", "none"):
        directory = workdir / f"{int(params)}-{name}"
        stalls: list[float] = []
        callbacks = contender(name, directory, every, stalls)
        start = time.perf_counter()
        model.fit(x, x, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
        wall = time.perf_counter() - start
        row = {
            "params": int(sum(np.prod(v.shape) for v in model.weights)),
            "contender": name,
            "fit_s": round(wall, 3),
            "saves": len(stalls),
            "stall_per_save_s": round(float(np.mean(stalls)), 4) if stalls else 0.0,
            "raw_state_bytes": raw,
            "host_copy_s": round(floor, 4),
        }
        if name != "none":
            row["disk_bytes"] = disk_bytes(directory)
            row["restore_s"] = round(restore_seconds(name, params, directory), 4)
        rows.append(row)
        shutil.rmtree(directory, ignore_errors=True)
    base = min(rows[0]["fit_s"], rows[-1]["fit_s"])
    rows = rows[:-1]
    rows[0]["fit_s"] = base
    for row in rows:
        row["overhead_vs_none"] = round(row["fit_s"] / base - 1, 3)
    return rows


def restore_seconds(name, params, directory: Path) -> float:
    fresh = build(params)
    fresh.optimizer.build(fresh.trainable_variables)
    start = time.perf_counter()
    if name == "keras_resume":
        kr.restore(fresh, directory)
    elif name == "BackupAndRestore":
        fresh.load_weights(str(directory / "latest.weights.h5"))
    else:
        fresh.load_weights(str(directory / "model.weights.h5"))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--params", type=float, nargs="+", default=[1e6, 25e6], choices=sorted(SHAPES)
    )
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--saves", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        for params in args.params:
            rows += run_size(params, args.every, args.saves, Path(tmp))
    header = (
        f"{'params':>11} {'contender':<17}{'stall/save s':>13}{'x host copy':>12}"
        f"{'fit overhead':>13}{'restore s':>10}{'disk/raw':>9}"
    )
    print(header)
    for r in rows:
        ratio = r["stall_per_save_s"] / r["host_copy_s"] if r["saves"] else 0
        disk = r.get("disk_bytes", 0) / r["raw_state_bytes"] if "disk_bytes" in r else 0
        print(
            f"{r['params']:>11} {r['contender']:<17}{r['stall_per_save_s']:>13.4f}"
            f"{ratio:>12.2f}{r['overhead_vs_none']:>13.1%}{r.get('restore_s', 0):>10.3f}"
            f"{disk:>9.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
