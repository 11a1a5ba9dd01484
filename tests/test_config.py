"""RunConfig: validation names the field, JSON round trip, stable keys, compute formula."""

import pytest

from sae_core.config import ConfigError, RunConfig

BASE = dict(cache_dir="/c", d_in=384, n_features=4096, n_steps=1000)


def test_json_round_trip_and_run_key() -> None:
    cfg = RunConfig(**BASE, lr=3e-4, seed=2)
    again = RunConfig.from_json(cfg.to_json())
    assert again == cfg and again.run_key == cfg.run_key
    # Where and how fast a run executes does not change what it computes...
    assert cfg.replace(device="cpu", num_threads=1, cache_dir="/elsewhere").run_key == cfg.run_key
    # ...but every hyperparameter does.
    assert cfg.replace(lr=1e-3).run_key != cfg.run_key
    assert cfg.replace(seed=3).run_key != cfg.run_key


def test_compute_is_six_times_two_d_f_tokens() -> None:
    cfg = RunConfig(**BASE, batch_size_tokens=4096)
    assert cfg.n_tokens == 1000 * 4096
    assert cfg.compute_flops == 6 * 2 * 384 * 4096 * 1000 * 4096


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"n_features": 0}, "n_features"),
        ({"n_steps": -5}, "n_steps"),
        ({"lr": 0.0}, "lr"),
        ({"batch_size_tokens": 2.5}, "batch_size_tokens"),
        ({"l1_coefficient": -1.0}, "l1_coefficient"),
        ({"lr_decay_frac": 1.5}, "lr_decay_frac"),
        ({"autocast": "fp8"}, "autocast"),
        ({"seed": -1}, "seed"),
        ({"l1_warmup_steps": "1e2"}, "l1_warmup_steps"),
        ({"dead_window_tokens": 0}, "dead_window_tokens"),
        ({"eval_every_steps": 2.5}, "eval_every_steps"),
        ({"checkpoint_every_steps": -1}, "checkpoint_every_steps"),
    ],
)
def test_bad_values_name_the_field(change: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        RunConfig(**{**BASE, **change})


def test_unknown_and_missing_keys_are_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown config key.*n_feature\\b"):
        RunConfig.from_dict({**BASE, "n_feature": 3})
    with pytest.raises(ConfigError, match="missing config key.*n_steps"):
        RunConfig.from_dict({k: v for k, v in BASE.items() if k != "n_steps"})
