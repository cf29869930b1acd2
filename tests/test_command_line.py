"""Tests of the config loader (ml_collections.config_flags): typed overrides, locking, errors."""

import math
import os
import subprocess
import sys
import textwrap

import pytest

from training import command_line

DIGITS = "configs/digits.py:resnet-20"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(**overrides):
    return command_line.load_config(DIGITS, overrides)


def test_file_arg_reaches_get_config_and_no_arg_keeps_the_files_default():
    c = command_line.load_config("configs/digits.py:plain-56")
    assert (c.model.depth, c.model.plain, c.dataset) == (56, True, "digits")
    c = command_line.load_config("configs/digits.py")  # get_config's default: resnet-20
    assert (c.model.depth, c.model.plain) == (20, False)


@pytest.mark.parametrize(
    "key,text,expected",
    [
        ("model.depth", "56", 56),
        ("optimizer.lr", "1", 1.0),  # an int for a float field stays a float
        ("optimizer.lr", "2e-3", 0.002),
        ("model.plain", "True", True),
        ("model.plain", "yes", True),
        ("model.plain", "0", False),
        ("model.plain", "No", False),
        ("model.stem", "cifar", "cifar"),  # a placeholder(str) takes a string
        ("model.widths", "(4,8,16)", (4, 8, 16)),
        ("schedule.boundaries_steps", "(10,)", (10,)),
        ("schedule.boundaries_steps", "10", (10,)),  # one value: a 1-tuple
        ("augment.scale", "[1.0, 1.25]", (1.0, 1.25)),
        ("optimizer.max_norm", "3", 3.0),  # a placeholder(float)
        ("imbalance.counter", "none", None),  # a string field set to None
        ("imbalance.classes", "None", None),
        ("schedule.warmup_until_error", "null", None),
        ("data_dir", "/data/tfds dir", "/data/tfds dir"),
    ],
)
def test_overrides_take_the_type_of_the_field_they_replace(key, text, expected):
    c = _load(**{key: text})
    section, _, leaf = key.rpartition(".")
    value = (c[section] if section else c)[leaf]
    assert value == expected and type(value) is type(expected)


def test_nan_parses_as_a_float_for_validation_to_reject():
    c = _load(**{"optimizer.lr": "nan"})
    assert isinstance(c.optimizer.lr, float) and math.isnan(c.optimizer.lr)


def test_the_config_is_locked_and_untouched_fields_keep_the_files_values():
    c = _load(**{"model.depth": "32"})
    assert c.is_locked and c.model.depth == 32 and c.num_steps == 600
    with pytest.raises(AttributeError):
        c.model.no_such_key = 1
    with pytest.raises(AttributeError):
        c.new_section = 1


def _one_line_error(path, overrides=None):
    with pytest.raises(ValueError) as e:
        command_line.load_config(path, overrides)
    message = str(e.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"no_such_key": "1"}, "unknown config key 'no_such_key'"),
        ({"model.depth": "20", "model.no_such_key": "1"}, "unknown config key 'model.no_such_key'"),
        ({"model.depth": "20", "nope.x": "1"}, "unknown config key 'nope.x'"),  # missing section
        ({"model.depth.x": "1"}, "unknown config key 'model.depth.x'"),  # not a section
        ({"nope": "none"}, "unknown config key 'nope'"),
        ({"model.depth": "abc"}, "bad value 'abc' for config key 'model.depth': invalid literal"),
        ({"model.depth": "5.5"}, "bad value '5.5' for config key 'model.depth'"),
        ({"optimizer.lr": "fast"}, "bad value 'fast' for config key 'optimizer.lr'"),
        ({"model.plain": "maybe"}, "config key 'model.plain': expected true or false"),
        ({"model.widths": "(4, 8"}, "bad value '(4, 8' for config key 'model.widths'"),
        # A bare word is not taken for the 1-tuple ('32k',).
        ({"schedule.boundaries_steps": "32k"}, "bad value '32k' for config key"),
    ],
)
def test_unknown_keys_and_bad_values_are_one_line_errors_naming_them(overrides, message):
    assert message in _one_line_error(DIGITS, overrides)


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_broken_config_files_are_one_line_errors_naming_the_file(tmp_path):
    assert "config file 'configs/nope.py' does not exist" in _one_line_error("configs/nope.py")
    message = _one_line_error("configs/degradation.py:mnist")
    assert message.startswith("get_config('mnist') in configs/degradation.py failed: ValueError:")
    assert "unknown study 'mnist'" in message
    assert "takes 0 positional arguments" in _one_line_error("configs/default.py:x")
    raises = _write(tmp_path, "raises.py", """
        def get_config(arg=None):
            raise RuntimeError("first line\\nsecond line")
    """)
    assert _one_line_error(raises, {"model.depth": "20"}) == (
        f"get_config(None) in {raises} failed: RuntimeError: first line second line")
    syntax = _write(tmp_path, "syntax.py", "def get_config(:\n")
    assert f"config file {syntax} failed to load: SyntaxError" in _one_line_error(syntax)
    not_a_config = _write(tmp_path, "dict.py", "def get_config():\n    return {'a': 1}\n")
    assert "must return an ml_collections.ConfigDict" in _one_line_error(not_a_config, {"a": "2"})


def test_a_file_without_get_config_does_not_reuse_the_previous_files(tmp_path):
    command_line.load_config(DIGITS)  # config_flags imports each file as the same module
    empty = _write(tmp_path, "empty.py", "X = 1\n")
    assert "has no get_config(arg) function" in _one_line_error(empty)


def test_a_config_file_outside_configs_can_import_from_configs(tmp_path):
    study = _write(tmp_path, "study.py", """
        from configs import digits

        def get_config(arg=None):
            return digits.get_config("plain-20")
    """)
    assert command_line.load_config(study, {"seed": "3"}).seed == 3


def test_parse_overrides_and_train_args():
    assert command_line.parse_overrides(["--config.a.b=1", "--config.c", "2", "--config.d=x=y"]) \
        == {"a.b": "1", "c": "2", "d": "x=y"}
    for extra, message in [(["--workers=2"], "unrecognised argument '--workers=2'"),
                           (["--config.a"], "--config.a needs a value"),
                           (["--config.=1"], "empty config key")]:
        with pytest.raises(ValueError, match=message):
            command_line.parse_overrides(extra)
    args = command_line.parse_train_args(["--config", DIGITS, "--workdir", "w",
                                          "--config.data_dir", "/p q", "--config.seed=2"])
    assert (args.config, args.workdir, args.overrides) == (
        DIGITS, "w", {"data_dir": "/p q", "seed": "2"})
    assert command_line.load_config(args.config, args.overrides).data_dir == "/p q"
    with pytest.raises(ValueError, match="--workdir"):
        command_line.parse_train_args(["--config", DIGITS])


def test_bad_input_prints_one_error_line_and_returns_2(capsys):
    assert command_line.bad_input(ValueError("no good")) == 2
    assert capsys.readouterr().err == "error: no good\n"


def test_train_py_by_absolute_path_from_another_directory_loads_configs(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), "--config",
                          os.path.join(REPO, "configs", "digits.py:resnet-20"), "--workdir",
                          str(tmp_path / "run"), "--config.no_such_key=1"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == ["error: unknown config key 'no_such_key'"]
