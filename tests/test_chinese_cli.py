"""Chinese (and other text Hydra's grammar rejects unquoted) on the command line: quoted for the user where
that is plainly one string, with a note; where it is not, the error prints the quoted form to copy."""

from __future__ import annotations

import shlex

import pytest

from ascend_lab.cli import hydra_quoted, override_problem, parse_override, quote_for_hydra

PROMPT = "你好,昇腾!"


@pytest.mark.parametrize("value", [
    PROMPT, "它说\"你好\"", "it's 昇腾", "it's \"both\" 昇腾", "back\\slash 昇", "ends in \\", "\\'", " 空格 ",
    "",
])
def test_hydra_quoted_parses_back_to_the_value(value):
    override = parse_override(f"benchmark.prompt={hydra_quoted(value)}")
    assert override is not None and not override.is_sweep_override()
    assert override.value() == value


def test_unquoted_chinese_is_quoted_with_a_note():
    argv, notes = quote_for_hydra(["task=infer", f"benchmark.prompt={PROMPT}", "benchmark.new_tokens=4"])
    assert argv == ["task=infer", f'benchmark.prompt="{PROMPT}"', "benchmark.new_tokens=4"]
    (note,) = notes
    assert "benchmark.prompt" in note and shlex.quote(f'benchmark.prompt="{PROMPT}"') in note


def test_quoted_prompt_reaches_the_config_as_the_exact_string(compose):
    for value in (PROMPT, "it's \"both\" 昇腾 \\"):
        argv, _ = quote_for_hydra(["task=infer", f"benchmark.prompt={value}"])
        assert compose(*argv).benchmark.prompt == value


@pytest.mark.parametrize("argv", [
    ["-m", "task=bench", "benchmark.batch_size=1,4,8"],  # a sweep Hydra accepts: never touched
    ["task=bench", "benchmark.prompt=hello"],
    ["-m", "task=infer", f"benchmark.prompt={PROMPT}"],  # the comma may separate sweep values
    ["hydra.mode=MULTIRUN", "task=infer", f"benchmark.prompt={PROMPT}"],
    ["task=bench", "atc.dynamic_dims=[1,你"],  # list, dict, interpolation, grammar function, quoting gone wrong
    ["task=bench", "benchmark.prompt={a:你}"],
    ["task=bench", "benchmark.prompt=${你}"],
    ["task=bench", "benchmark.batch_sizes=range(1,你)"],
    ["task=bench", "benchmark.prompt='你好"],
    ["task=bench", "=你好"],
    ["-cd", "你好", "task=bench"],  # a flag's value is not an override
])
def test_left_alone(argv):
    assert quote_for_hydra(argv) == (argv, [])


def test_no_comma_under_multirun_is_still_one_string():
    argv, notes = quote_for_hydra(["-m", "task=infer", "benchmark.prompt=你好"])
    assert argv[-1] == 'benchmark.prompt="你好"' and len(notes) == 1


def test_multirun_comma_error_gives_both_forms_to_copy():
    problem = override_problem(["-m", "task=infer", f"benchmark.prompt={PROMPT}"])
    assert f"Invalid override 'benchmark.prompt={PROMPT}'" in problem
    assert "token recognition error at: '你'" in problem
    assert "Under -m a comma separates sweep values" in problem
    assert shlex.quote(f'benchmark.prompt="{PROMPT}"') in problem
    assert shlex.quote('benchmark.prompt="你好","昇腾!"') in problem


def test_other_rejected_values_keep_the_general_advice():
    problem = override_problem(["task=bench", "atc.dynamic_dims=[1,你"])
    assert "Invalid override 'atc.dynamic_dims=[1,你'" in problem and "quote values with brackets" in problem


@pytest.mark.slow
def test_cfg_job_shows_the_unquoted_prompt(run_cli):
    result = run_cli("--cfg", "job", "task=infer", f"benchmark.prompt={PROMPT}", timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"prompt: {PROMPT}" in result.stdout
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: quoted benchmark.prompt")]
    assert len(notes) == 1, result.stderr


@pytest.mark.slow
def test_grammar_characters_in_a_single_run_are_quoted(run_cli):
    shape = "input_ids:1,16;attention_mask:1,16"
    result = run_cli("--cfg", "job", "task=compile", f"atc.input_shape={shape}", timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"input_shape: {shape}" in result.stdout


@pytest.mark.slow
def test_multirun_comma_fails_with_the_form_to_copy(run_cli, tmp_path):
    result = run_cli("-m", "task=infer", f"benchmark.prompt={PROMPT}", "tracking=off", timeout=120)
    assert result.returncode == 1
    assert shlex.quote(f'benchmark.prompt="{PROMPT}"') in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "outputs").exists()  # rejected before Hydra made anything


@pytest.mark.slow
def test_unquoted_chinese_prompt_generates(run_cli):
    result = run_cli("task=infer", f"benchmark.prompt={PROMPT}", "benchmark.new_tokens=4", "runtime=torch",
                     "tracking=off", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert PROMPT in result.stdout and "generated" in result.stdout
