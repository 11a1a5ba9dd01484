"""Mistakes and faults a user meets, each met with exit code 2, one line
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


# ---- what a trial uses, checked on the driver -------------------------------------------
@pytest.mark.parametrize("base, resources, fragments", [
    (", device: gpu0", "", ("base.device", "'gpu0' is not a device")),
    (", device: cuda", "", ("base.device", "needs resources.gpu > 0")),
    (", device: 'cuda:1'", "resources: {cpu: 1, gpu: 0.5}\n", ("base.device",
                                                                 "sees only the 1 GPU")),
    (", batch_size_tokens: 500000", "", ("base.batch_size_tokens", "199920 training rows")),
    ("", "resources: {cpu: 4096}\n", ("resources.cpu", "Ray would never start a trial")),
])
def test_a_field_a_trial_would_die_on_is_refused_by_dry_run_and_submit_alike(
        tmp_path: Path, synthetic_cache: Path, capsys: pytest.CaptureFixture, base: str,
        resources: str, fragments: tuple[str, ...]) -> None:
    spec = write(tmp_path / "s.yaml", FAST_SPEC.format(cache=synthetic_cache, base=base)
                 .replace("batch_size_tokens: 256, ", "" if "batch" in base else
                          "batch_size_tokens: 256, ") + resources)
    for extra in (["--dry-run"], []):  # the same checks, before anything exists
        refused(capsys, ["submit", spec, "--storage", tmp_path / "store", *extra], *fragments,
                untouched=tmp_path)
    assert not (tmp_path / "store").exists()


SYNTHETIC_BUILD = ", build: {{synthetic: {{d_in: 8, n_true_features: 16, n_tokens: 4000{}}}}}"


@pytest.mark.parametrize("build, fragments", [
    (", n_tokenz: 10", ("cache.build.synthetic.n_tokenz: unknown key",)),
    (", l0: 20", ("cache.build.synthetic", "l0 must lie in (0, n_true_features=16)")),
    (", dtype: float8", ("cache.build.synthetic.dtype: must be one of",)),
])
def test_dry_run_refuses_the_cache_build_a_submit_refuses(
        tmp_path: Path, capsys: pytest.CaptureFixture, build: str,
        fragments: tuple[str, ...]) -> None:
    cache = f"{tmp_path / 'cache'}{SYNTHETIC_BUILD.format(build)}"
    spec = write(tmp_path / "s.yaml", f"name: f\ncache: {{path: {cache}}}\n"
                 "grid: {n_features: [16], n_steps: [10]}\n")
    for extra in (["--dry-run"], []):
        refused(capsys, ["submit", spec, "--storage", tmp_path / "store", *extra], *fragments,
                untouched=tmp_path)


def test_a_cache_built_from_other_settings_than_cache_build_is_never_used(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from sae_core.synthetic import PlantedDictionary, build_synthetic_cache

    build_synthetic_cache(tmp_path / "cache", PlantedDictionary(d_in=8, n_true_features=32),
                          4000)
    spec = write(tmp_path / "s.yaml", f"name: f\ncache: {{path: {tmp_path / 'cache'}"
                 f"{SYNTHETIC_BUILD.format('')}}}\nbase: {{batch_size_tokens: 256}}\n"
                 "grid: {n_features: [16], n_steps: [10]}\n")
    for extra in (["--dry-run"], []):
        refused(capsys, ["submit", spec, "--storage", tmp_path / "store", *extra],
                "cache.path", "built from other settings", "n_true_features 32, asked 16",
                untouched=tmp_path)
    # the same settings, `l0: 4` in the spec against the builder's 4.0: the same cache
    write(tmp_path / "s.yaml", spec.read_text().replace("n_true_features: 16",
                                                        "n_true_features: 32, l0: 4"))
    assert main(["submit", str(spec), "--dry-run"]) == 0


@pytest.mark.parametrize("flags, fragments", [
    (["--batch-size-tokens", "500000"], ("batch_size_tokens", "199920 training rows")),
    (["--n-features", "10000000000"], ("n_features", "GiB to train")),
    (["--device", "gpu0"], ("device 'gpu0' is not a torch device",)),
])
def test_train_refuses_what_it_would_only_find_out_while_training(
        tmp_path: Path, synthetic_cache: Path, capsys: pytest.CaptureFixture,
        flags: list[str], fragments: tuple[str, ...]) -> None:
    argv = ["train", "--cache", synthetic_cache, "--n-features", "32", "--n-steps", "10",
            *flags, "--out", tmp_path / "run"]
    refused(capsys, argv, *fragments, untouched=tmp_path)


# ---- leftovers of killed builds ---------------------------------------------------------
def test_a_rebuild_removes_the_staging_folders_of_dead_builders_only(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import os
    import subprocess
    import sys
    import time

    out = tmp_path / "cache"
    hold = ("import sys, time; from pathlib import Path; "
            "from sae_core.cache_staging import staging_folder\n"
            "with staging_folder(Path(sys.argv[1])) as f:\n"
            "    (f / 'staging.npy').write_bytes(bytes(1 << 20)); print(f, flush=True); "
            "time.sleep(120)")
    builders = [subprocess.Popen([sys.executable, "-c", hold, str(out)], text=True,
                                 stdout=subprocess.PIPE) for _ in range(2)]
    dead, alive = (Path(b.stdout.readline().strip()) for b in builders)  # type: ignore[union-attr]
    builders[0].kill()  # SIGKILL mid-build: its folder and lock file stay behind
    builders[0].wait()
    old = tmp_path / ".cache.tmp-0badc0de"  # a build that never locked (older monoscale)
    (old / "staging.npy").parent.mkdir()
    (old / "staging.npy").write_bytes(bytes(1000))
    for path in (old, old / "staging.npy"):
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    try:
        assert main(["cache", "--synthetic", "--d-in", "8", "--n-true-features", "16",
                     "--n-tokens", "2000", "--out", str(out)]) == 0
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left == sorted(["cache", alive.name, alive.name + ".lock"]), left
        assert dead.name in capsys.readouterr().err  # said what it removed
    finally:
        builders[1].kill()
        builders[1].wait()


# ---- storage faults ---------------------------------------------------------------------
@pytest.fixture
def real_store(tmp_path: Path) -> Path:
    """A store holding one sweep's parent run, as a first submit leaves it."""
    from sweeps import tracking
    from sweeps.store import default_tracking_uri, prepare_store

    store = tmp_path / "store"
    uri = default_tracking_uri(store)
    prepare_store(uri)
    tracking.open_sweep(uri, "f", 1, store / "mlartifacts", tmp_path / "s.yaml")
    return store / "mlflow.db"


@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_a_damaged_store_is_named_and_left_as_it_is(
        tmp_path: Path, synthetic_cache: Path, real_store: Path, capsys: pytest.CaptureFixture,
        damage: str) -> None:
    data = real_store.read_bytes()
    real_store.write_bytes(data[:len(data) // 2] if damage == "truncated"
                           else b"\0" * 100 + data[100:])
    spec = write(tmp_path / "s.yaml", FAST_SPEC.format(cache=synthetic_cache, base=""))
    storage = ["--storage", real_store.parent]
    for argv in (["submit", spec, *storage], ["submit", spec, *storage, "--dry-run"],
                 ["status", spec, *storage], ["analyze", spec, *storage, "--out",
                                                tmp_path / "fits"]):
        refused(capsys, argv, f"MLflow store {real_store} is damaged", untouched=tmp_path)


@pytest.fixture
def read_only(tmp_path: Path):
    """Make paths read-only for this process: chattr +i as root (who ignores modes)."""
    import os
    import shutil
    import subprocess

    made: list[Path] = []

    def make(path: Path) -> None:
        if os.geteuid() == 0:
            if shutil.which("chattr") is None or subprocess.run(
                    ["chattr", "+i", str(path)], capture_output=True).returncode:
                pytest.skip("root, and no chattr +i here: cannot make a read-only path")
        else:
            path.chmod(0o555 if path.is_dir() else 0o444)
        made.append(path)

    yield make
    for path in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        else:
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_a_read_only_store_fails_in_seconds_naming_it(
        tmp_path: Path, synthetic_cache: Path, real_store: Path, read_only,
        capsys: pytest.CaptureFixture) -> None:
    import time

    spec = write(tmp_path / "s.yaml", FAST_SPEC.format(cache=synthetic_cache, base=""))
    read_only(real_store)
    started = time.monotonic()
    refused(capsys, ["submit", spec, "--storage", real_store.parent], f"{real_store}",
            "read-only", untouched=tmp_path)
    # status only reads: it still works on a read-only store
    assert main(["status", str(spec), "--storage", str(real_store.parent)]) == 0
    empty = tmp_path / "empty"  # a read-only folder and no store yet: MLflow retried 114 s
    empty.mkdir()
    read_only(empty)
    refused(capsys, ["submit", spec, "--storage", empty], f"{empty}", "read-only",
            untouched=tmp_path)
    assert time.monotonic() - started < 15


def test_storage_and_tracking_uris_that_no_trial_could_share(
        tmp_path: Path, synthetic_cache: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from sweeps.driver import Where

    spec = write(tmp_path / "s.yaml", FAST_SPEC.format(cache=synthetic_cache, base=""))
    (tmp_path / "afile").write_text("mine")
    refused(capsys, ["submit", spec, "--storage", tmp_path / "afile"], "--storage",
            "is a file", untouched=tmp_path)
    for uri, fragment in (("sqlite://", "in-memory"), ("./mlruns", "file store"),
                          ("ftp://h/x", "unknown scheme")):
        refused(capsys, ["submit", spec, "--tracking-uri", uri, "--dry-run"], fragment,
                untouched=tmp_path)
    # a relative SQLite path names one file for the driver and for every Ray worker
    monkeypatch.chdir(tmp_path)
    assert Where.resolve(None, "sqlite:///runs.db").tracking_uri == \
        f"sqlite:///{tmp_path / 'runs.db'}"


def test_train_out_never_overwrites_a_file_a_run_or_someone_elses_folder(
        tmp_path: Path, synthetic_cache: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["train", "--cache", synthetic_cache, "--n-features", "32", "--n-steps", "10",
            "--batch-size-tokens", "256", "--out"]
    (tmp_path / "afile").write_text("mine")
    refused(capsys, [*argv, tmp_path / "afile"], "afile is a file", untouched=tmp_path)
    assert main([str(a) for a in [*argv, tmp_path / "run"]]) == 0
    capsys.readouterr()
    refused(capsys, [*argv, tmp_path / "run"], "holds a finished run", untouched=tmp_path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "cfg.txt").write_text("mine")
    refused(capsys, [*argv, tmp_path / "notes"], "not a run's (cfg.txt)", untouched=tmp_path)


# ---- data that is not what it seems -----------------------------------------------------
def _arrays() -> dict[str, object]:
    import numpy as np

    rng = np.random.default_rng(0)
    real = rng.standard_normal((500, 4))
    with_nan, too_big = real.copy(), real.copy()
    with_nan[7, 2], too_big[3, 1] = np.nan, 1e300
    return {"complex": (real + 1j * real).astype(np.complex64), "bool": real > 0,
            "records": np.zeros((500, 4), dtype=[("a", "f4"), ("b", "f4")]),
            "text": np.full((500, 4), "a"), "nan": with_nan, "beyond_float32": too_big}


@pytest.mark.parametrize("name, fragment", [
    ("complex", "complex values (the imaginary part would be dropped)"),
    ("bool", "holds booleans"), ("records", "not numbers"), ("text", "not numbers"),
    ("nan", "row 7 holds NaN or inf"), ("beyond_float32", "row 3 holds NaN or inf"),
])
def test_an_array_that_is_not_real_activations_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture, name: str, fragment: str) -> None:
    import numpy as np

    file = tmp_path / f"{name}.npy"
    np.save(file, _arrays()[name])
    refused(capsys, ["cache", "--npy", file, "--out", tmp_path / "c"], f"{file}", fragment,
            untouched=tmp_path)


def test_complex_safetensors_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"acts": torch.randn(100, 4, dtype=torch.complex64)}, tmp_path / "a.safetensors")
    refused(capsys, ["cache", "--npy", tmp_path / "a.safetensors", "--out", tmp_path / "c"],
            "C64", "complex values", untouched=tmp_path)


# ---- plans and analyses that should not be trusted ---------------------------------------
@pytest.fixture(scope="module")
def runs_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An IsoFLOP sweep drawn from a known law (d_in 64, batch 256, budgets to 1e12)."""
    from planted_runs import isoflop_runs

    from analysis.parametric import ParametricFit

    law = ParametricFit(E=0.2, A=40.0, B=20.0, alpha=0.6, beta=0.5, objective=0.0, n_runs=0)
    runs = isoflop_runs(law, [3e10, 1e11, 3e11, 1e12], 12 * 64 * 256, seed=3)
    path = tmp_path_factory.mktemp("runs") / "runs.csv"
    runs.assign(lr=1e-3, batch_size_tokens=256, d_in=64).to_csv(path, index=False)
    return path


def test_duplicated_rows_never_narrow_an_interval(
        tmp_path: Path, runs_csv: Path, capsys: pytest.CaptureFixture) -> None:
    import pandas as pd

    twice = tmp_path / "twice.csv"
    pd.concat([pd.read_csv(runs_csv)] * 2).to_csv(twice, index=False)
    fits = {}
    for name, csv in (("once", runs_csv), ("twice", twice)):
        assert main(["analyze", "--runs-csv", str(csv), "--out", str(tmp_path / name),
                     "--draws", "40"]) == 0
        fits[name] = json.loads((tmp_path / name / "fits.json").read_text())
    assert "24 rows repeat an earlier row: each run counted once" in capsys.readouterr().err
    for law in ("features_opt", "steps_opt", "loss_vs_compute"):  # counted twice: narrower
        assert fits["twice"][law]["exponent_ci95"] == fits["once"][law]["exponent_ci95"]
    assert fits["twice"]["n_runs"] == fits["once"]["n_runs"] == 24


def test_a_plan_says_how_far_it_extrapolates_and_refuses_what_cannot_run(
        tmp_path: Path, runs_csv: Path, synthetic_cache: Path,
        capsys: pytest.CaptureFixture) -> None:
    assert main(["analyze", "--runs-csv", str(runs_csv), "--out", str(tmp_path / "a"),
                 "--draws", "0"]) == 0
    fits = tmp_path / "a" / "fits.json"
    capsys.readouterr()
    assert main(["plan", "--fits", str(fits), "--compute", "4e12", "--out",
                 str(tmp_path / "p4.json")]) == 0
    assert "plan: 4e+12 FLOPs is 4x the largest budget swept" in capsys.readouterr().err
    assert main(["plan", "--fits", str(fits), "--compute", "1e16", "--out",
                 str(tmp_path / "p16.json")]) == 0
    assert "warning: plan: 1e+16 FLOPs is 1e+04x the largest budget" in capsys.readouterr().err
    # 1e40 FLOPs: 2e27 times beyond the sweep; its token count overflows int64
    refused(capsys, ["plan", "--fits", fits, "--compute", "1e40", "--out", tmp_path / "p.json"],
            "overflows the trainer's 64-bit token count", "1e+28x the largest budget",
            untouched=tmp_path)
    # a plan this machine cannot hold: refused by submit, before any run exists
    plan = json.loads((tmp_path / "p16.json").read_text())
    plan["run_config"].update(n_features=10**11, d_in=32)
    (tmp_path / "big.json").write_text(json.dumps(plan))
    spec = write(tmp_path / "s.yaml", FAST_SPEC.format(cache=synthetic_cache, base=""))
    refused(capsys, ["submit", spec, "--plan", tmp_path / "big.json", "--storage",
                     tmp_path / "store"], "F=100000000000", "GiB to train", untouched=tmp_path)


# ---- one driver per sweep: the claim in the tracking store (no Ray needed) ----------------
def test_a_sweep_claim_goes_to_one_driver_and_passes_on_only_when_its_holder_is_gone(
        tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys
    import time
    from dataclasses import asdict, replace

    from sweeps import sweep_lock, tracking
    from sweeps.store import default_tracking_uri, prepare_store
    from sweeps.sweep_lock import SweepBusy, claim_sweep, this_process

    uri = default_tracking_uri(tmp_path)
    prepare_store(uri)
    target = tracking.open_sweep(uri, "f", 1, tmp_path / "art", tmp_path / "s.yaml")

    def pretend(n: int, beat: str, **holder: object) -> None:  # another driver's claim
        tracking.write_claim(target, n, json.dumps({**asdict(this_process()), **holder}))
        tracking.beat(target, n, beat)

    # alive on another host (fresh heartbeat): busy, naming it
    pretend(1, str(time.time()), host="node-7", pid=4242, since="2026-01-01 10:00:00")
    with pytest.raises(SweepBusy, match="being run by pid 4242 on node-7 since 2026-01-01 "
                       "10:00:00 .*claim monoscale.claim.1"):
        claim_sweep(target)
    # silent on another host for longer than STALE_S: taken over, with claim 2
    tracking.beat(target, 1, str(time.time() - sweep_lock.STALE_S - 1))
    mine = claim_sweep(target)
    assert mine.n == 2 and tracking.latest_claim(target).n == 2
    with pytest.raises(SweepBusy, match=f"pid {os.getpid()} on {socket.gethostname()}"):
        claim_sweep(target)  # held by a live process here
    mine.release()
    # a dead process on this host: taken over at once, whatever its heartbeat says
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    pretend(4, str(time.time()), pid=int(dead), pid_start="1")
    again = claim_sweep(target)
    assert again.n == 5
    again.release()
    # a param is written once: a second writer of claim 6 loses, the first keeps it
    assert tracking.write_claim(target, 6, "first") and not tracking.write_claim(target, 6, "x")
    assert replace(tracking.latest_claim(target), beat=None).holder == "first"
    # claimed on another host a moment ago, before its first heartbeat: not stale
    tracking.write_claim(target, 7, json.dumps({**asdict(this_process()), "host": "node-9"}))
    with pytest.raises(SweepBusy, match="on node-9"):
        claim_sweep(target)
