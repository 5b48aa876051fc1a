"""``import fastrnn`` from a source tree whose kernels are not built: a clear error."""

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_unbuilt_checkout_says_what_to_run(tmp_path):
    """A copy of the Python sources without the compiled extensions, imported from its root."""
    shutil.copytree(
        os.path.join(ROOT, "fastrnn"),
        tmp_path / "fastrnn",
        ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"),
    )
    shutil.copy(os.path.join(ROOT, "setup.py"), tmp_path / "setup.py")
    out = subprocess.run(
        [sys.executable, "-c", "import fastrnn"], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: fastrnn's compiled kernels (rnn, lstm, gru) are not built")
    assert "python setup.py build_ext --inplace" in last
    assert str(tmp_path) in last


def test_built_tree_imports():
    out = subprocess.run(
        [sys.executable, "-c", "import fastrnn._kernels.lstm, fastrnn; print(fastrnn.__file__)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == os.path.join(ROOT, "fastrnn", "__init__.py")
