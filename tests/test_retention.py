"""Retention policies: the module's example runs, and each policy keeps what it says."""

import doctest

from keras_resume import retention


def _manifest(kinds_and_fits, best_id=None):
    checkpoints = [
        {"id": i, "kind": kind, "epoch": i, "epoch_complete": True, "fit": fit, "fingerprint": "f"}
        for i, (kind, fit) in enumerate(kinds_and_fits)
    ]
    best = {"checkpoint_id": best_id} if best_id is not None else None
    return {"best": best, "fingerprints": {"f": {}, "unused": {}}, "checkpoints": checkpoints}


def test_the_module_example_runs():
    result = doctest.testmod(retention, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


def test_a_saver_leaves_the_other_kind_and_earlier_fits_alone():
    manifest = _manifest([("best", 0), ("backup", 0), ("backup", 0), ("backup", 1), ("backup", 1)])
    kept = retention.plan(manifest, retention.for_saver("backup", 1, fit=1))
    assert sorted(kept) == [0, 2, 4]
    removed = retention.unlist(manifest, kept)
    assert [c["id"] for c in removed] == [1, 3]
    assert manifest["fingerprints"] == {"f": {}}  # the fingerprint no entry uses went


def test_prune_never_drops_the_resume_point_or_the_current_best():
    manifest = _manifest([("best", 0), ("best", 0), ("backup", 0), ("backup", 0)], best_id=0)
    kept = retention.plan(manifest, retention.for_prune(keep_last=0, keep_best=0, every=None))
    assert kept == {0: ["current best"], 3: ["newest backup (resume point)"]}
