"""Mistakes and faults a user meets (issue 15), each met with exit code 2, one line
`monoscale CMD: error: ...` naming the file or field, no traceback, and nothing created,
written or lost. These run without Ray: every check here happens before Ray starts.
The faults that need a real sweep (two concurrent submits, a killed driver, the sockets
a sweep listens on) are in tests/test_sweep_faults.py."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from sweeps.cli import main

FAST_SPEC = """name: f
cache: {{path: {cache}}}
base: {{lr: 1e-2, batch_size_tokens: 256, eval_n_tokens: 512{base}}}
grid: {{n_features: [32], n_steps: [10]}}
"""


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its size and modification time: what "nothing was
    touched" compares."""
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def refused(capsys: pytest.CaptureFixture, argv: Sequence[str], *fragments: str,
            untouched: Path | None = None) -> str:
    """Run the CLI; assert exit code 2 and one stderr line naming every fragment, no
    traceback, and (with `untouched`) no file under it created, changed or removed."""
    before = tree(untouched) if untouched is not None else None
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, captured.out + captured.err
    assert err.startswith(f"monoscale {argv[0]}: error: ") and "\n" not in err, err
    assert "Traceback" not in captured.out + captured.err
    for fragment in fragments:
        assert fragment in err, err
    if untouched is not None:
        assert tree(untouched) == before
    return err


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---- the same key twice ----------------------------------------------------------------
def test_a_key_given_twice_is_refused_in_specs_run_configs_and_plans(
        tmp_path: Path, synthetic_cache: Path, capsys: pytest.CaptureFixture) -> None:
    # PyYAML and json keep the last value: this spec trained at lr 3e-3 without a word.
    spec = write(tmp_path / "s.yaml", FAST_SPEC.format(cache=synthetic_cache,
                                                       base=", lr: 3e-3"))
    store = tmp_path / "store"
    for argv in (["submit", spec, "--storage", store], ["submit", spec, "--dry-run"]):
        refused(capsys, argv, "s.yaml", "line 3", "'lr' given twice", untouched=tmp_path)
    run = write(tmp_path / "run.yaml", f"cache_dir: {synthetic_cache}\nn_features: 32\n"
                "n_steps: 10\nn_steps: 20\n")
    refused(capsys, ["train", run, "--out", tmp_path / "run"], "run.yaml", "line 4",
            "'n_steps' given twice", untouched=tmp_path)
    good = write(tmp_path / "good.yaml", FAST_SPEC.format(cache=synthetic_cache, base=""))
    plan = write(tmp_path / "plan.json", json.dumps({"n_features": 64})[:-1]
                 + ', "n_features": 128, "n_steps": 10}')
    refused(capsys, ["submit", good, "--plan", plan, "--dry-run"], "plan.json",
            "'n_features' given twice", untouched=tmp_path)
