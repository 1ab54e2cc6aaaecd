"""Source notebooks are committed without outputs and take a SCALE parameter."""

import re
from pathlib import Path

import nbformat
import pytest

CHAPTERS = sorted((Path(__file__).resolve().parents[1] / "chapters").glob("*.ipynb"))
SCALE_ASSIGNMENT = re.compile(r"^SCALE\s*(:[^=\n]*)?=", re.MULTILINE)


@pytest.mark.skipif(not CHAPTERS, reason="chapters/ has no notebooks yet")
@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_notebook_is_clean_and_parametrised(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    dirty = [i for i, c in enumerate(code) if c.outputs or c.execution_count is not None]
    assert not dirty, (
        f"{path.name}: code cells {dirty} have outputs or execution counts; run `make strip`"
    )
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{path.name}: needs exactly one code cell tagged 'parameters'"
    assert SCALE_ASSIGNMENT.search(params[0].source), (
        f"{path.name}: the parameters cell must define SCALE"
    )
