"""Which checkpoints stay: one set of retention policies for the savers and `prune`.

A policy reads a manifest and names the entries it keeps, each with a reason;
`plan` gathers them and `unlist` takes every other entry (and the fingerprints
only they used) out of the manifest. Deleting the files of what was unlisted
is `CheckpointDirectory.remove`'s, after the manifest without them is written:
a crash in between leaves only unlisted directories, which the next session
removes.

Example:

>>> from keras_resume import retention
>>> manifest = {"best": None, "fingerprints": {"f": {}}, "checkpoints": [
...     {"id": i, "kind": "backup", "epoch": i, "epoch_complete": True, "fingerprint": "f"}
...     for i in range(5)]}
>>> policy = retention.AnyOf(retention.KeepLast(2), retention.KeepEveryEpochs(2))
>>> sorted(retention.plan(manifest, policy))
[1, 3, 4]
>>> [c["id"] for c in retention.unlist(manifest, retention.plan(manifest, policy))]
[0, 2]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Protocol

from keras_resume import manifest as mf


class Policy(Protocol):
    """Names the manifest entries to keep, each with the reason why."""

    def kept(self, manifest: dict) -> Iterator[tuple[dict, str]]: ...


@dataclasses.dataclass(frozen=True)
class KeepLast:
    """The newest `n` checkpoints of `kind` (of fit number `fit` only, if not None)."""

    n: int
    kind: str = "backup"
    fit: int | None = None
    why: str | None = None

    def kept(self, manifest: dict) -> Iterator[tuple[dict, str]]:
        if self.why is not None:
            why = self.why
        elif self.kind == "backup":
            why = f"last {self.n} backups"
        else:
            why = f"newest {self.n} {self.kind}"
        entries = mf.checkpoints_of_kind(manifest, self.kind, self.fit)
        for entry in entries[::-1][: self.n]:
            yield entry, why


@dataclasses.dataclass(frozen=True)
class KeepOtherFits:
    """The newest backup of every `fit` of the script but the newest backup's own.

    A rerun of the script restores a finished phase (freeze, fit; unfreeze,
    recompile, fit) from it; see `FullStateResume`.
    """

    def kept(self, manifest: dict) -> Iterator[tuple[dict, str]]:
        backups = mf.checkpoints_of_kind(manifest, "backup")
        newest = {mf.fit_of(c): c for c in backups}  # the last of each fit wins
        for fit, entry in sorted(newest.items()):
            if entry is not backups[-1]:
                yield entry, f"newest backup of fit {fit}"


@dataclasses.dataclass(frozen=True)
class KeepBest:
    """The checkpoint that holds the best value so far (the manifest's `best`)."""

    def kept(self, manifest: dict) -> Iterator[tuple[dict, str]]:
        best_id = (manifest.get("best") or {}).get("checkpoint_id")
        for entry in manifest["checkpoints"]:
            if entry["id"] == best_id:
                yield entry, "current best"


@dataclasses.dataclass(frozen=True)
class KeepEveryEpochs:
    """Each backup that completed an epoch whose 1-based number is a multiple of `n`."""

    n: int

    def kept(self, manifest: dict) -> Iterator[tuple[dict, str]]:
        for entry in mf.checkpoints_of_kind(manifest, "backup"):
            if entry["epoch_complete"] and (entry["epoch"] + 1) % self.n == 0:
                yield entry, f"end of epoch {entry['epoch'] + 1} (every {self.n})"


@dataclasses.dataclass(frozen=True)
class KeepOtherKinds:
    """Every checkpoint not of `kind`: a saver's policy leaves the other saver's alone."""

    kind: str

    def kept(self, manifest: dict) -> Iterator[tuple[dict, str]]:
        for entry in manifest["checkpoints"]:
            if entry["kind"] != self.kind:
                yield entry, f"not a {self.kind}"


class AnyOf:
    """Keeps what any of `policies` keeps, with every reason given."""

    def __init__(self, *policies: Policy):
        self.policies = policies

    def kept(self, manifest: dict) -> Iterator[tuple[dict, str]]:
        for policy in self.policies:
            yield from policy.kept(manifest)

    def __repr__(self) -> str:
        return f"AnyOf{self.policies!r}"


def plan(manifest: dict, policy: Policy) -> dict[int, list[str]]:
    """Why each kept checkpoint stays: `{id: [reasons]}`; ids not in it go."""
    reasons: dict[int, list[str]] = {}
    for entry, why in policy.kept(manifest):
        reasons.setdefault(entry["id"], []).append(why)
    return reasons


def unlist(manifest: dict, keep: Iterable[int]) -> list[dict]:
    """Takes every entry whose id is not in `keep` out of `manifest`; returns them.

    Fingerprints no remaining entry uses go too.
    """
    keep = set(keep)
    removed = [c for c in manifest["checkpoints"] if c["id"] not in keep]
    manifest["checkpoints"] = [c for c in manifest["checkpoints"] if c["id"] in keep]
    used = {c["fingerprint"] for c in manifest["checkpoints"]}
    manifest["fingerprints"] = {k: v for k, v in manifest["fingerprints"].items() if k in used}
    return removed


def for_saver(kind: str, keep: int, fit: int | None) -> Policy:
    """What a saver keeping `keep` checkpoints of `kind` leaves listed once it committed.

    Backups are counted per `fit`, the one writing (the newest backup is the
    one just committed): of every other fit the newest backup stays.
    """
    if kind == "backup" and fit is not None:
        return AnyOf(KeepLast(keep, kind, fit), KeepOtherFits(), KeepOtherKinds(kind))
    return AnyOf(KeepLast(keep, kind), KeepOtherKinds(kind))


def for_prune(keep_last: int, keep_best: int, every: int | None) -> Policy:
    """`prune`'s rule: the newest `keep_last` backups and `keep_best` best checkpoints,
    the backups ending every `every`-th epoch; never the newest backup (where a resume
    continues), the newest backup of each other fit, or the current best."""
    policies = [
        KeepLast(1, "backup", why="newest backup (resume point)"),
        KeepOtherFits(),
        KeepBest(),
        KeepLast(keep_last, "backup"),
        KeepLast(keep_best, "best"),
    ]
    if every:
        policies.append(KeepEveryEpochs(every))
    return AnyOf(*policies)
