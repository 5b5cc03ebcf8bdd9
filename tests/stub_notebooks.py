"""Stub stage notebooks for the runner's tests (imported as ``stub_notebooks``)."""

import json
from pathlib import Path


def write_stage(path: Path, params: str, *body: str) -> Path:
    """A python3 notebook at ``path``: a ``parameters`` cell with source ``params``, then one code cell per ``body``."""
    sources = [params, *body]
    cells = [{"id": f"c{i}", "cell_type": "code", "metadata": {"tags": ["parameters"]} if i == 0 else {},
              "source": src, "outputs": [], "execution_count": None} for i, src in enumerate(sources)]
    kernel = {"name": "python3", "language": "python", "display_name": "Python 3"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cells": cells, "metadata": {"kernelspec": kernel}, "nbformat": 4, "nbformat_minor": 5}))
    return path
