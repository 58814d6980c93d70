"""RunConfig: TOML + flags, validation, helpful errors; every shipped config loads."""
from __future__ import annotations

from pathlib import Path

import pytest

from gru_xp.config import CONFIG_DIR, RunConfig, make_config, read_toml
from gru_xp.errors import UserError

SHIPPED = ["default", "goog", "goog-seed", "aapl", "ibm", "electric", "sine"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load_and_are_valid(name):
    assert (CONFIG_DIR / f"{name}.toml").is_file()
    c = make_config(name)
    assert isinstance(c, RunConfig) and c.name == name


def test_goog_seed_has_the_seed_numbers():
    c = make_config("goog-seed")
    assert (c.split_ratio, c.seq_length, c.hidden_size, c.epochs, c.lr, c.optimizer) == (0.7, 10, 70, 1000, 1e-5, "sgd")
    assert c.data == "GOOG.csv" and c.batch_size == 0


def test_flags_override_toml(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text('data = "sine"\nepochs = 7\nlr = 0.01\ndifference = [1, 12]\n[model]\nhidden_size = 5\n')
    c = make_config(p, {"epochs": "3", "lr": None})
    assert (c.epochs, c.lr, c.hidden_size, c.difference, c.name) == (3, 0.01, 5, [1, 12], "x")


def test_difference_forms():
    assert make_config(None, {"difference": "1,12"}).difference == [1, 12]
    assert make_config(None, {"difference": "0"}).difference == []
    assert make_config(None, {"difference": "12"}).difference == [12]


def test_unknown_key_suggests_the_closest(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text("learning_rat = 0.1\nhiden_size = 3\n")
    with pytest.raises(UserError, match="did you mean"):
        make_config(p)


def test_bad_toml_is_user_error(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text("epochs = = 3\n")
    with pytest.raises(UserError, match="not valid TOML"):
        make_config(p)


def test_missing_config_file():
    with pytest.raises(UserError, match="not found"):
        make_config("no-such-config")


@pytest.mark.parametrize("key, value, fragment", [
    ("epochs", "abc", "integer"), ("lr", "-1", "positive"), ("split_ratio", "1.5", "between 0 and 1"),
    ("optimizer", "rmsprop", "unknown optimizer"), ("device", "tpu", "unknown device"), ("scaler", "log", "scaler"),
    ("cell", "transformer", "unknown cell"), ("difference", "a,b", "lags"), ("dtype", "float16", "dtype"),
    ("batch_size", "-3", "batch-size"), ("epochs", "0", "at least 1"),
])
def test_bad_values(key, value, fragment):
    with pytest.raises(UserError, match=fragment) as e:
        make_config(None, {key: value})
    assert "\n" not in str(e.value)


def test_toml_type_errors_name_the_file(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text('epochs = "many"\n')
    with pytest.raises(UserError, match=r"--epochs in .*x\.toml"):
        make_config(p)


def test_tables_are_flattened(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text('[data]\ndata = "sine"\n[train]\nepochs = 2\n')
    assert read_toml(p)["epochs"] == 2 and Path(str(p)).stem == make_config(p).name


def test_choices_come_from_the_math_floors_registries():
    from gru_xp import config
    from gru_xp.nn.optim import OPTIMIZERS
    from gru_xp.nn.recurrent import CELLS
    from gru_xp.nn.rnn import NONLINEARITIES

    assert config.CELLS == tuple(CELLS) and config.OPTIMIZERS == tuple(OPTIMIZERS)
    for key, good, bad in (("cell", CELLS, "tcn"), ("optimizer", OPTIMIZERS, "adamw"),
                           ("nonlinearity", NONLINEARITIES, "gelu")):
        for v in good:
            assert getattr(make_config(None, {key: v}), key) == v
        with pytest.raises(UserError, match=f"unknown {key} {bad!r}"):
            make_config(None, {key: bad})


def test_nonlinearity_reaches_the_model_and_its_checkpoint(tmp_path):
    from gru_xp.runs import build_model, load_run, run

    cfg = make_config("sine", {"cell": "rnn", "nonlinearity": "relu", "epochs": 1, "hidden_size": 3, "quiet": True,
                               "plots": False, "sine_length": 60, "seq_length": 5, "out": str(tmp_path / "r")})
    assert build_model(cfg).rnn.nonlinearity == "relu"
    run(cfg)
    assert load_run(tmp_path / "r").model.rnn.nonlinearity == "relu"
