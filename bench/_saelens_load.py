"""SAELens loading monoscale's saved SAEs: runs in SAELens's own virtualenv
(bench/README.md), as a subprocess of saelens_layout.py, so monoscale never imports it.

    python _saelens_load.py ACTS.safetensors RUN_DIR [RUN_DIR ...]

For each run directory: `sae_lens.SAE.load_from_disk(RUN_DIR)`, then its encode and decode
of the raw activations `x` [N, d] in ACTS.safetensors, saved as RUN_DIR/saelens_out
.safetensors (f [N, F], x_hat [N, d]). Prints one JSON line: per run the class SAELens
chose, its architecture, or the error it raised.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from sae_lens import SAE, __version__
from safetensors.torch import load_file, save_file


def main() -> None:
    x = load_file(sys.argv[1])["x"]
    report: dict[str, object] = {"sae_lens": __version__}
    for run_dir in sys.argv[2:]:
        try:
            sae = SAE.load_from_disk(run_dir)
            with torch.no_grad():
                f = sae.encode(x)
                x_hat = sae.decode(f)
            save_file({"f": f.contiguous(), "x_hat": x_hat.contiguous()},
                      str(Path(run_dir) / "saelens_out.safetensors"))
            report[run_dir] = {"class": type(sae).__name__,
                               "architecture": sae.cfg.architecture()}
        except Exception as err:  # the report says what failed, run by run
            report[run_dir] = {"error": f"{type(err).__name__}: {err}"}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
