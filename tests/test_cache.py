"""The activation cache: round trip, deterministic resumable batches, normalisation,
checksums, atomic builds, reuse, and import from .npy/.safetensors."""

from __future__ import annotations

import itertools
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from sae_core import cache_writer
from sae_core.array_files import build_array_cache
from sae_core.cache import ActivationCache, CacheError
from sae_core.cache_writer import build_cache
from sae_core.errors import UserError


def take(iterator, n: int) -> list[torch.Tensor]:
    return list(itertools.islice(iterator, n))


@pytest.fixture
def indexed_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, np.ndarray]:
    """10,000 rows whose column 0 is the row's index, in several small shards."""
    monkeypatch.setattr(cache_writer, "SHARD_BYTES", 1 << 16)  # 2048 rows of d=8 float32
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((10_000, 8)).astype(np.float32)
    rows[:, 0] = np.arange(len(rows))
    np.save(tmp_path / "rows.npy", rows)
    build_array_cache(tmp_path / "cache", tmp_path / "rows.npy")
    return tmp_path / "cache", rows


def row_ids(cache: ActivationCache, batch: torch.Tensor) -> np.ndarray:
    return torch.round(batch[:, 0] / cache.norm_scale).long().numpy()


def test_same_seed_same_batches_other_seed_other(synthetic_cache: Path) -> None:
    cache = ActivationCache.open(synthetic_cache)
    a = take(cache.train_batches(4096, seed=1), 3)
    b = take(cache.train_batches(4096, seed=1, prefetch=False), 3)
    c = take(cache.train_batches(4096, seed=2), 3)
    assert all(x.dtype == torch.float32 and x.shape == (4096, 32) for x in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not any(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_start_step_resumes_exactly_across_epochs(indexed_cache) -> None:
    path, _ = indexed_cache
    cache = ActivationCache.open(path)
    batch_size = 3000  # does not divide the 9,800 train rows: batches straddle epochs
    uninterrupted = take(cache.train_batches(batch_size, seed=5), 9)
    for k in (1, 3, 4, 8):
        resumed = take(cache.train_batches(batch_size, seed=5, start_step=k), 9 - k)
        assert all(torch.equal(x, y) for x, y in zip(uninterrupted[k:], resumed, strict=True))


def test_each_epoch_visits_every_train_row_once(indexed_cache) -> None:
    path, rows = indexed_cache
    cache = ActivationCache.open(path)
    assert len(cache.meta["train_shards"]) == 5  # 9,800 rows in shards of 2,048
    eval_ids = row_ids(cache, cache.eval_tokens(10**6))
    train_ids = np.setdiff1d(np.arange(len(rows)), eval_ids)
    assert len(eval_ids) == cache.n_eval_tokens == 200  # 2% held out
    assert len(train_ids) == cache.n_train_tokens
    n = cache.n_train_tokens
    stream = np.concatenate([row_ids(cache, b) for b in take(cache.train_batches(700, 0), 29)])
    first, second = stream[:n], stream[n:2 * n]
    assert np.array_equal(np.sort(first), train_ids)
    assert np.array_equal(np.sort(second), train_ids)
    assert not np.array_equal(first, second)  # a new block order every epoch
    # Rows were shuffled at build time: a shard is not a run of consecutive rows.
    shard = np.load(path / "train-00000.npy")[:, 0]
    assert np.abs(np.diff(shard)).mean() > 100


def test_batches_hold_the_stored_values(indexed_cache) -> None:
    path, rows = indexed_cache
    cache = ActivationCache.open(path)
    batch = next(cache.train_batches(512, seed=0))
    expected = torch.from_numpy(rows[row_ids(cache, batch)]) * cache.norm_scale
    torch.testing.assert_close(batch, expected)


def test_normalisation_gives_mean_squared_norm_d(synthetic_cache: Path) -> None:
    cache = ActivationCache.open(synthetic_cache)
    epoch = next(cache.train_batches(cache.n_train_tokens, seed=0))
    mean_sq_norm = epoch.double().square().sum(1).mean().item()
    assert mean_sq_norm == pytest.approx(cache.d_in, rel=1e-3)
    held_out = cache.eval_tokens(cache.n_eval_tokens).square().sum(1).mean().item()
    assert held_out == pytest.approx(cache.d_in, rel=0.05)  # same distribution


@pytest.mark.parametrize("dtype, rel", [("float16", 1e-3), ("bfloat16", 8e-3)])
def test_half_precision_storage(tmp_path: Path, dtype: str, rel: float) -> None:
    rows = np.random.default_rng(1).standard_normal((5000, 16)).astype(np.float32) * 3
    np.save(tmp_path / "rows.npy", rows)
    cache = build_array_cache(tmp_path / "cache", tmp_path / "rows.npy", dtype=dtype)
    assert cache.meta["dtype"] == dtype
    assert np.load(tmp_path / "cache" / "train-00000.npy").itemsize == 2
    everything = torch.cat([cache.eval_tokens(10**6),
                            next(cache.train_batches(cache.n_train_tokens, 0))])
    assert everything.square().sum(1).mean().item() == pytest.approx(16, rel=0.01)
    # Stored values are the inputs rounded to the dtype's precision.
    got = np.sort((everything / cache.norm_scale).numpy().ravel())
    np.testing.assert_allclose(got, np.sort(rows.ravel()), rtol=rel, atol=1e-6)


def test_float16_overflow_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "big.npy", np.full((100, 4), 1e5, dtype=np.float32))
    with pytest.raises(CacheError, match="bfloat16"):
        build_array_cache(tmp_path / "cache", tmp_path / "big.npy", dtype="float16")
    assert not (tmp_path / "cache").exists()


def corrupt_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_flipped_byte_fails_the_full_check_naming_the_shard(synthetic_cache: Path,
                                                           tmp_path: Path) -> None:
    path = corrupt_copy(synthetic_cache, tmp_path / "c")
    shard = path / "train-00000.npy"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    ActivationCache.open(path, verify="size")  # same size: only the checksum can tell
    with pytest.raises(CacheError, match="train-00000.npy.*checksum"):
        ActivationCache.open(path, verify="full")


def test_the_full_check_covers_the_planted_dictionary(synthetic_cache: Path,
                                                      tmp_path: Path) -> None:
    path = corrupt_copy(synthetic_cache, tmp_path / "c")
    truth = path / "true_dictionary.npy"
    data = bytearray(truth.read_bytes())
    data[-1] ^= 0xFF
    truth.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="true_dictionary.npy.*checksum"):
        ActivationCache.open(path, verify="full")


def test_truncated_missing_and_unfinished_caches(synthetic_cache: Path, tmp_path: Path) -> None:
    path = corrupt_copy(synthetic_cache, tmp_path / "c")
    shard = path / "eval-00000.npy"
    shard.write_bytes(shard.read_bytes()[:-64])
    with pytest.raises(CacheError, match="eval-00000.npy"):
        ActivationCache.open(path)
    shard.unlink()
    with pytest.raises(CacheError, match="eval-00000.npy is missing"):
        ActivationCache.open(path)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(CacheError, match="meta.json is corrupt"):
        ActivationCache.open(path)
    (path / "meta.json").write_text("[1, 2]")
    with pytest.raises(CacheError, match="is not a .* meta file"):
        ActivationCache.open(path)
    (path / "meta.json").unlink()
    with pytest.raises(CacheError, match="no meta.json"):
        ActivationCache.open(path)
    with pytest.raises(CacheError, match="not a directory"):
        ActivationCache.open(tmp_path / "nowhere")
    assert issubclass(CacheError, UserError)


def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    def produce(writer):
        writer.add(np.ones((10, 4), dtype=np.float32))
        raise RuntimeError("the source broke")

    with pytest.raises(RuntimeError):
        build_cache(tmp_path / "cache", {"kind": "test"}, 100, "float32", produce)
    assert list(tmp_path.iterdir()) == []


def test_rebuild_reuses_and_another_source_is_refused(tmp_path: Path, capsys) -> None:
    calls = []

    def produce(writer):
        calls.append(1)
        writer.add(np.random.default_rng(0).standard_normal((100, 4)))
        return {}

    first = build_cache(tmp_path / "cache", {"kind": "test"}, 100, "float32", produce)
    meta_before = (tmp_path / "cache" / "meta.json").read_text()
    again = build_cache(tmp_path / "cache", {"kind": "test"}, 100, "float32", produce)
    assert calls == [1]
    assert "reusing" in capsys.readouterr().err
    assert (tmp_path / "cache" / "meta.json").read_text() == meta_before
    assert again.meta == first.meta
    with pytest.raises(CacheError, match="other settings .n_tokens 100, asked 50"):
        build_cache(tmp_path / "cache", {"kind": "test"}, 50, "float32", produce)


def test_npy_import_flattens_leading_dims(tmp_path: Path) -> None:
    rows = np.random.default_rng(2).standard_normal((4, 250, 12)).astype(np.float32)
    np.save(tmp_path / "acts.npy", rows)
    cache = build_array_cache(tmp_path / "cache", tmp_path / "acts.npy")
    assert (cache.d_in, cache.n_train_tokens + cache.n_eval_tokens) == (12, 1000)
    assert cache.meta["source"]["shape"] == [4, 250, 12]
    got = torch.cat([cache.eval_tokens(10**6), next(cache.train_batches(cache.n_train_tokens, 0))])
    np.testing.assert_allclose(np.sort((got / cache.norm_scale).numpy(), axis=0),
                               np.sort(rows.reshape(-1, 12), axis=0), rtol=1e-6)


def test_safetensors_import_by_name(tmp_path: Path) -> None:
    acts = np.random.default_rng(3).standard_normal((600, 10)).astype(np.float32)
    save_file({"acts": acts, "other": np.zeros((3, 3), np.float32)}, tmp_path / "a.safetensors")
    with pytest.raises(UserError, match="--tensor"):
        build_array_cache(tmp_path / "c0", tmp_path / "a.safetensors")
    with pytest.raises(UserError, match="no tensor 'nope'"):
        build_array_cache(tmp_path / "c0", tmp_path / "a.safetensors", tensor="nope")
    cache = build_array_cache(tmp_path / "c1", tmp_path / "a.safetensors", tensor="acts",
                              n_tokens=500)
    assert (cache.d_in, cache.n_train_tokens + cache.n_eval_tokens) == (10, 500)
    meta = json.loads((tmp_path / "c1" / "meta.json").read_text())
    assert meta["source"]["tensor"] == "acts"
    assert meta["source"]["kind"] == "array"


def test_prefetch_thread_stops_when_the_iterator_is_closed(synthetic_cache: Path) -> None:
    cache = ActivationCache.open(synthetic_cache)
    batches = cache.train_batches(1024, seed=0)
    take(batches, 2)
    assert any(t.name == "cache-prefetch" for t in threading.enumerate())
    batches.close()
    deadline = time.monotonic() + 5
    while any(t.name == "cache-prefetch" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the prefetch thread outlived its iterator"
        time.sleep(0.01)
