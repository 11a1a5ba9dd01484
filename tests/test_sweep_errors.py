"""Bad input stops a submit before any trial starts or any MLflow run exists (fast: the
checks run before Ray starts)."""

from __future__ import annotations

import io
import socket
import time
from pathlib import Path

import pytest

from sae_core.errors import UserError
from sweeps.cache_setup import planned_d_in
from sweeps.driver import Where, submit
from sweeps.progress import SweepProgress
from sweeps.spec import load_spec


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


def spec_file(tmp_path: Path, cache: Path, build: str = "") -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(f"name: e\ncache: {{path: {cache}{build}}}\n"
                    "grid: {n_features: [32], n_steps: [10]}\n")
    return path


def test_unreachable_ray_address_is_named_and_nothing_is_created(
        tmp_path: Path, synthetic_cache: Path) -> None:
    address = f"127.0.0.1:{closed_port()}"
    store = tmp_path / "store"
    started = time.monotonic()
    with pytest.raises(UserError, match=f"Ray cluster at {address} is unreachable"):
        submit(load_spec(spec_file(tmp_path, synthetic_cache)), Where.resolve(str(store), None),
               address=address)
    assert time.monotonic() - started < 10
    assert not (store / "mlflow.db").exists()


def test_unreachable_tracking_server_is_named(tmp_path: Path, synthetic_cache: Path) -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(UserError, match=f"MLflow tracking server {uri} is unreachable"):
        submit(load_spec(spec_file(tmp_path, synthetic_cache)),
               Where.resolve(str(tmp_path / "store"), uri))


def test_missing_cache_without_build_instructions(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with pytest.raises(UserError, match="^cache.path: no activation cache at .*no cache.build"):
        submit(load_spec(spec_file(tmp_path, tmp_path / "nowhere")),
               Where.resolve(str(store), None))
    assert not (store / "mlflow.db").exists()


def test_bad_build_instructions_name_the_field(tmp_path: Path) -> None:
    spec = load_spec(spec_file(tmp_path, tmp_path / "c",
                               ", build: {synthetic: {d_in: 8, n_tokenz: 10}}"))
    with pytest.raises(UserError, match="^cache.build.synthetic.n_tokenz: unknown key"):
        submit(spec, Where.resolve(str(tmp_path / "store"), None))



@pytest.mark.parametrize("build", [", build: {model: minilm}", ", build: {synthetic: 64}",
                                   ", build: {synthetic: {d_in: 8}, model: {}}"])
def test_dry_run_names_a_malformed_build(tmp_path: Path, build: str) -> None:
    # --dry-run reads d_in from the build instructions without building: same checks
    spec = load_spec(spec_file(tmp_path, tmp_path / "c", build))
    with pytest.raises(UserError, match="^cache.build"):
        planned_d_in(spec)


def test_progress_eta_weighs_trials_by_compute() -> None:
    now = [0.0]
    out = io.StringIO()
    progress = SweepProgress("s", {"a": 1e9, "b": 3e9, "c": 4e9}, out=out, clock=lambda: now[0])
    assert progress.eta_s() is None  # nothing finished yet: no rate
    progress.start("a")
    now[0] = 10.0
    progress.finish("a", loss=1.5)  # 1e9 FLOPs in 10 s; 7e9 left -> 70 s
    assert progress.eta_s() == pytest.approx(70.0)
    progress.fail("b", "diverged")  # settled: its compute is no longer ahead
    assert progress.eta_s() == pytest.approx(40.0)
    assert "1/3 done, 0 running, 1 failed" in out.getvalue().splitlines()[-1]
