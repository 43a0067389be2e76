"""Every notebook in notebooks/ runs top to bottom in a real Jupyter kernel."""

import shutil
from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
# What each notebook must show; every notebook must prove its resume exact.
EXPECTED = {
    "quickstart.ipynb": [
        "Training interrupted: interrupted at step 45",
        "Resumed runs/quickstart at epoch 3, step 8 of 16: skipping 8 batches",
        "'resumed'",  # kr.plot marked the resume point
    ],
    "exact_resume.ipynb": [
        "Training interrupted: interrupted at step 45",
        "Resumed runs/exact_resume/keras-resume at epoch 3, step 8 of 16: skipping 8 batches",
        "keras-resume: 64 optimizer steps",
        "BackupAndRestore: 72 optimizer steps",
        "BackupAndRestore bit-identical: False",
    ],
}


def _outputs(nb) -> str:
    texts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", "") or output.get("data", {}).get("text/plain", ""))
    return "\n".join(texts)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    shutil.copy(path, tmp_path / path.name)
    nb = nbformat.read(tmp_path / path.name, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError if any cell fails
    text = _outputs(nb)
    for marker in ["bit-identical: True", *EXPECTED.get(path.name, [])]:
        assert marker in text
