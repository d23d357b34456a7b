"""docs/models.md cannot drift: its ```python blocks run in order in one namespace (their asserts are the checks), and
the printed errors equal the ```text block that follows them."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "models.md"


def test_python_examples_run_and_print_what_the_doc_shows():
    text = DOC.read_text()
    blocks = re.findall(r"^```python\n(.*?)^```\n(?:```text\n(.*?)^```)?", text, flags=re.S | re.M)
    assert len(blocks) >= 3
    namespace: dict = {}
    for i, (code, shown) in enumerate(blocks):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"{DOC.name} python block {i}", "exec"), namespace)
        printed = out.getvalue()
        if shown:
            assert printed == shown, f"block {i} printed:\n{printed}"
        # A printed line shown as a comment right after the print must match too.
        for line in re.findall(r"^print\(.*\)\n# (.*)$", code, flags=re.M):
            assert line in printed, f"block {i}: {line!r} not in {printed!r}"
