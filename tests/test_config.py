"""Config loading: base chains, overrides, and one clear error line per bad config."""

import re
import subprocess
import sys
import textwrap

import pytest

from lit_snapvideo.config import ConfigError, load_config, save_config


@pytest.fixture
def experiment(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(
        textwrap.dedent("""
        model: {preset: fit_small}
        trainer: {max_steps: 500, seed: 3}
        diffusion: {sigma_in: 4.0}
    """)
    )
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\ntrainer: {max_steps: 200}\noptim: {name: adam, lr: 1.0e-4}\n")
    return child


def test_base_chain_and_overrides(experiment, tmp_path):
    cfg = load_config(experiment, ["trainer.max_steps=50", "data.size=[18,32]", "text.checkpoint=/x/y.pt"])
    assert cfg.trainer.max_steps == 50  # override beats the file
    assert cfg.trainer.seed == 3  # inherited from the base
    assert cfg.optim.name == "adam" and cfg.optim.lr == pytest.approx(1e-4)
    assert list(cfg.data.size) == [18, 32] and cfg.text.checkpoint == "/x/y.pt"
    assert cfg.logging.experiment == "child"  # named after its YAML
    out = save_config(cfg, tmp_path / "run")
    again = load_config(out)
    assert again.trainer.max_steps == 50 and list(again.data.size) == [18, 32]


def test_defaults_without_file():
    cfg = load_config(None)
    assert cfg.diffusion.sigma_in == 4.0 and cfg.diffusion.sigma_data == 1.0
    assert cfg.diffusion.p_mean == -1.2 and cfg.diffusion.p_std == 1.2


BAD = [
    ("trainer: {max_step: 10}", [], r"unknown key 'trainer\.max_step'.*valid keys here: .*max_steps"),
    ("trainer: {max_steps: many}", [], r"'trainer\.max_steps'"),
    ("trainer: {max_steps: -5}", [], r"'trainer\.max_steps': -5 \(expected an integer > 0\)"),
    ("diffusion: {sigma_in: 0}", [], r"'diffusion\.sigma_in': 0\.0 \(expected a finite number > 0\)"),
    ("diffusion: {sigma_in: -1.5}", [], r"'diffusion\.sigma_in'"),
    ("optim: {name: sgd}", [], r"'optim\.name': 'sgd' \(expected auto, adam, adamw or lamb\)"),
    ("data: {size: [36, 64], pad_to: [32, 64]}", [], r"'data\.pad_to'"),
    ("trainer: {profiler: pytorch}", [], r"'trainer\.profiler': 'pytorch' \(expected null, 'simple' or 'advanced'\)"),
    ("moddel: {preset: x}", [], r"unknown key 'moddel'.*valid keys here: data, diffusion"),
    (
        "{}",
        ["trainer.max_steps=0"],
        r"^command line override trainer\.max_steps=0: bad value for 'trainer\.max_steps': 0 ",
    ),
    (
        "{}",
        ["trainer.max_steps=abc"],
        r"^command line override trainer\.max_steps=abc: bad value for 'trainer\.max_steps'",
    ),
    ("{}", ["trainer.bogus=1"], r"^command line override trainer\.bogus=1: unknown key 'trainer\.bogus'"),
    ("{}", ["max_steps"], r"not of the form key\.path=value"),
    ("", [], r"the file is empty"),
    ("# only a comment\n", [], r"the file is empty"),
    ("[1, 2]", [], r"expected a mapping"),
    ("trainer: {max_steps: 5\n", [], r"not valid YAML"),
]


@pytest.mark.parametrize("text,overrides,pattern", BAD)
def test_bad_config_is_one_clear_line(tmp_path, text, overrides, pattern):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    if not overrides:
        assert str(path) in message  # names the file


def test_override_errors_name_the_override_and_file_errors_the_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("trainer: {max_steps: 0}\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: bad value for 'trainer\.max_steps': 0"):
        load_config(path, ["trainer.seed=1"])  # an override of another key takes no blame
    with pytest.raises(ConfigError, match=r"^command line override trainer\.max_steps=-1: "):
        load_config(path, ["trainer.max_steps=5", "trainer.max_steps=-1"])  # the last one set the value
    assert load_config(path, ["trainer.max_steps=3"]).trainer.max_steps == 3
    path.write_text("model: {preset: fit_tiny}\n")  # the preset from the file, the frame count from the command line
    with pytest.raises(ConfigError, match=r"^command line override data\.frames=4: the clip data\.frames x data"):
        load_config(path, ["trainer.seed=1", "data.frames=4"])


def test_an_empty_base_is_named_too(tmp_path):
    (tmp_path / "base.yaml").write_text("")
    (tmp_path / "child.yaml").write_text("base: base.yaml\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(tmp_path / 'base.yaml'))}: the file is empty"):
        load_config(tmp_path / "child.yaml")
    (tmp_path / "all_defaults.yaml").write_text("{}\n")
    assert load_config(tmp_path / "all_defaults.yaml").trainer.max_steps == 1000


def test_missing_file_and_base_loop(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "a.yaml")


def test_cli_exits_2_without_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("diffusion: {sigma_in: -1}\n")
    proc = subprocess.run([sys.executable, "-m", "lit_snapvideo", "config", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "diffusion.sigma_in" in proc.stderr and str(path) in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_help_lists_subcommands():
    proc = subprocess.run([sys.executable, "-m", "lit_snapvideo", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "config" in proc.stdout
