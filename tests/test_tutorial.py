"""docs/tutorial.md and the README's model example run as written, with the same bits twice.

The code blocks are extracted and run top to bottom as one script, in a fresh process in an empty
directory (the tutorial writes a checkpoint), with warnings that fastrnn raises turned into
errors (a MissingGradientWarning would mean the documented backward forgets a child).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fastrnn

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.md"
README = ROOT / "README.md"


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, re.S | re.M)


def _section(markdown: str, heading: str) -> str:
    start = markdown.index(f"\n## {heading}\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[start : end if end != -1 else None]


def _run_script(code: str, directory: Path) -> str:
    path = directory / "script.py"
    path.write_text(code)
    env = dict(os.environ)
    # the fastrnn under test (this tree), whatever is installed
    env["PYTHONPATH"] = str(Path(fastrnn.__file__).resolve().parents[1])
    res = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", str(path)],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    return res.stdout


@pytest.mark.slow
def test_tutorial_runs_and_gives_the_same_output_in_two_processes(tmp_path):
    blocks = _python_blocks(TUTORIAL.read_text())
    assert len(blocks) >= 7  # seed, data, model, training, evaluation, checkpoint, generation
    code = "\n\n".join(blocks)
    for needed in (
        "fastrnn.manual_seed(0)",
        "clip_grad_norm_",
        "lr_scheduler",
        "model.eval()",
        "save_checkpoint",
        "load_checkpoint",
        "assert resumed == continued",
    ):
        assert needed in code, needed
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _run_script(code, tmp_path / "a")
    second = _run_script(code, tmp_path / "b")
    assert "resumed from epoch 60" in first
    assert first == second  # same losses, same generated text: same bits
    assert (tmp_path / "a" / "char_lm.ckpt").exists()
    # the model learned the text: the last printed training loss is far below the first
    losses = [float(v) for v in re.findall(r"train loss (\S+)", first)]
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.slow
def test_readme_model_section_runs(tmp_path):
    section = _section(README.read_text(), "Writing your own model")
    blocks = _python_blocks(section)
    assert blocks
    out = _run_script("\n\n".join(blocks), tmp_path)
    assert "MissingGradientWarning" in out  # the section shows the warning of a forgotten child


@pytest.mark.parametrize("heading", ["Writing your own model", "Checkpoints", "Reproducibility"])
def test_readme_has_the_sections_the_tutorial_points_to(heading):
    assert f"\n## {heading}\n" in README.read_text()


def _error_of(call):
    with pytest.raises(ValueError) as info:
        call()
    return str(info.value)


def test_readme_shape_table_quotes_the_real_errors():
    """Each example error of the README's shape table is what that mistake raises."""
    import numpy as np

    from fastrnn import nn

    f32 = np.float32
    lin, emb, drop = nn.Linear(16, 4), nn.Embedding(10, 4), nn.Dropout(0.5)
    emb(np.zeros((5, 8), int))
    drop(np.zeros((3, 4), f32))
    calls = [
        lambda: lin(np.zeros((8, 12), f32)),
        lambda: emb.backward(np.zeros((8, 5, 4), f32)),
        lambda: drop.backward(np.zeros((4, 3), f32)),
        lambda: nn.GRU(3, 16)(np.zeros((20, 32, 3), f32), np.zeros((32, 16), f32)),
        lambda: nn.LSTM(3, 16)(np.zeros((20, 32, 4), f32)),
        lambda: nn.CrossEntropyLoss()(np.zeros((20, 32, 5), f32), np.zeros((32, 20), int)),
        lambda: nn.MSELoss()(np.zeros((32, 1), f32), np.zeros(32, f32)),
    ]
    table = _section(README.read_text(), "Writing your own model")
    for call in calls:
        message = _error_of(call)
        assert f"`{message}`" in table, message
