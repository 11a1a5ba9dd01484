"""Bring your own activations: a cache from a `.npy` or `.safetensors` file.

The array is [n, d] (or [..., d], flattened to rows); it is streamed in chunks, so a file
larger than memory imports without loading it whole.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from sae_core.cache import ActivationCache
from sae_core.cache_writer import CacheWriter, build_cache
from sae_core.errors import UserError

CHUNK_ROWS = 1 << 16


def build_array_cache(out_dir: str | Path, file: str | Path, tensor: str | None = None,
                      n_tokens: int | None = None, dtype: str | None = None
                      ) -> ActivationCache:
    """Import `file` (all rows, or the first `n_tokens`). dtype None keeps the file's
    float16/bfloat16/float32 (other dtypes are stored as float32)."""
    file = Path(file)
    if not file.is_file():
        raise UserError(f"no activations file at {file}")
    shape, source_dtype, chunks = _open_array(file, tensor)
    if len(shape) < 2 or shape[-1] == 0:
        raise UserError(f"{file}: expected an array of shape [n, d] or [..., d], got {shape}")
    n_rows = math.prod(shape[:-1])
    if n_tokens is not None and n_tokens <= 0:
        raise UserError(f"n_tokens must be positive, got {n_tokens}")
    if n_tokens is not None and n_tokens > n_rows:
        print(f"note: {file} holds {n_rows} rows, fewer than the {n_tokens} asked for: "
              f"importing all {n_rows}", file=sys.stderr)
    n_tokens = n_rows if n_tokens is None else min(n_tokens, n_rows)
    if dtype is None:
        dtype = source_dtype if source_dtype in ("float16", "bfloat16") else "float32"

    def produce(writer: CacheWriter) -> dict[str, object]:
        first_row = 0
        for rows in chunks:
            bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
            if len(bad):  # NaN, inf, or a float64 beyond float32's range
                raise UserError(f"{file}: row {first_row + int(bad[0])} holds NaN or inf (or a "
                                "value beyond float32): not activations a cache can normalise")
            first_row += len(rows)
            if writer.add(rows) < len(rows) or writer.n_remaining == 0:
                break
        return {"shape": list(shape), "file_dtype": source_dtype}

    stat = file.stat()
    # A file is "the same source" when its path, size and modification time are (make-style).
    request = {"kind": "array", "file": str(file.resolve()), "tensor": tensor,
               "size_bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return build_cache(out_dir, request, n_tokens, dtype, produce)


def _open_array(file: Path, tensor: str | None
                ) -> tuple[tuple[int, ...], str, Iterator[np.ndarray]]:
    """(shape, dtype name, iterator of float32 row chunks [m, d])."""
    if file.suffix == ".npy":
        if tensor is not None:
            raise UserError(f"{file}: --tensor applies to .safetensors files only")
        try:
            array = np.load(file, mmap_mode="r")
        except (ValueError, OSError) as err:
            raise UserError(f"{file} is not a readable .npy array: {err}") from None
        _check_real(file, array.dtype.kind, str(array.dtype))
        rows = array.reshape(-1, array.shape[-1]) if array.ndim >= 2 else array

        def float_chunks() -> Iterator[np.ndarray]:
            for i in range(0, len(rows), CHUNK_ROWS):
                with np.errstate(over="ignore"):  # beyond float32 becomes inf: refused
                    chunk = np.asarray(rows[i:i + CHUNK_ROWS], dtype=np.float32)
                yield chunk

        chunks = float_chunks()
        return tuple(array.shape), str(array.dtype), chunks
    if file.suffix == ".safetensors":
        return _open_safetensors(file, tensor)
    raise UserError(f"{file}: expected a .npy or .safetensors file")


def _check_real(file: Path, kind: str, dtype: str) -> None:
    """Activations are real numbers: numpy's float, int and unsigned kinds. A complex array
    lost its imaginary part silently in the float32 conversion; bool, text, dates and
    structured records are not activations."""
    if kind not in "fiu":
        why = {"c": "complex values (the imaginary part would be dropped)",
               "b": "booleans"}.get(kind, "values that are not numbers")
        raise UserError(f"{file}: dtype {dtype} holds {why}; activations must be real "
                        "floats or integers")


def _open_safetensors(file: Path, tensor: str | None
                      ) -> tuple[tuple[int, ...], str, Iterator[np.ndarray]]:
    try:
        handle = safe_open(str(file), framework="pt")
    except Exception as err:  # safetensors raises its own SafetensorError
        raise UserError(f"{file} is not a readable .safetensors file: {err}") from None
    names = list(handle.keys())
    if tensor is None:
        if len(names) != 1:
            raise UserError(f"{file} holds tensors {names}: name one with --tensor")
        tensor = names[0]
    if tensor not in names:
        raise UserError(f"{file} has no tensor {tensor!r} (it has {names})")
    view = handle.get_slice(tensor)
    shape = tuple(view.get_shape())
    dtype_name = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}.get(
        view.get_dtype(), view.get_dtype().lower())
    kind = "b" if view.get_dtype() == "BOOL" else view.get_dtype()[:1].lower()
    _check_real(file, kind if kind in "fiub" else "c", f"{view.get_dtype()} ({tensor})")

    def chunks() -> Iterator[np.ndarray]:
        # Chunks along the first axis, each flattened to rows of d.
        step = max(1, CHUNK_ROWS // max(1, math.prod(shape[1:-1])))
        for i in range(0, shape[0], step):
            part: torch.Tensor = view[i:i + step]
            yield part.reshape(-1, shape[-1]).float().numpy()

    return shape, dtype_name, chunks()
