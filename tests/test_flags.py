"""Flags generated from the config models: model → flags → parse → the same model, the defaults, one-line
errors, and every field in its command's --help."""
from __future__ import annotations

import argparse

import pytest
from pydantic import BaseModel, Field

from tests.conftest import toolkit
from toolkit.cli import build_parser
from toolkit.core.errors import ToolkitError
from toolkit.core.flags import Flag, add_flags, flag_name, from_args
from toolkit.eval.config import BenchConfig, EvalConfig
from toolkit.export.config import ExportConfig

COMMANDS = {"export": ExportConfig, "eval": EvalConfig, "bench": BenchConfig}
# A value other than the default for every field, so a flag that is dropped or misread shows.
CHANGED = {
    ExportConfig: ExportConfig(format="genai", quant="int4", check=True, bundle=True, threads=3, max_new_tokens=7,
                               block_size=64, int4_head_bits=4, min_first_token_match=0.25, min_token_agreement=0.75,
                               eval_suite="svamp", eval_limit=5, data_root="/d", max_accuracy_drop=2.5,
                               tokenizer_gguf="pkg:base"),
    EvalConfig: EvalConfig(suite="svamp,asdiv", limit=3, backend="llama.cpp-server", strategy="pot", fewshot=2,
                           seed=7, max_new_tokens=32, calculator=True, batch_size=4, concurrency=9,
                           api_key_env="MY_KEY", threads=2, data_root="/d", tokenizer="/student"),
    BenchConfig: BenchConfig(prompt_tokens=8, gen_tokens=6, reps=2, warmup=0, threads=[1, 2, 4], allow_busy=True,
                             remote="ssh://me@edge:2222", remote_python="/opt/py", ssh_option=["A=1", "B=2"]),
}


def argv(config: BaseModel) -> list[str]:
    """The command line a user types for `config`."""
    out = []
    for name, info in type(config).model_fields.items():
        value, flag = getattr(config, name), flag_name(name)
        split = any(isinstance(m, Flag) and m.split for m in info.metadata)
        if value is None or value is False:
            continue
        if value is True:
            out.append(flag)
        elif isinstance(value, list) and split:
            out += [flag, ",".join(str(v) for v in value)]
        elif isinstance(value, list):
            out += [token for v in value for token in (flag, str(v))]
        else:
            out += [flag, str(value)]
    return out


def parser_for(model: type[BaseModel]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_flags(parser, model)
    return parser


@pytest.mark.parametrize("model", list(CHANGED), ids=lambda m: m.__name__)
def test_round_trip_model_flags_parse_model(model):
    config = CHANGED[model]
    assert all(getattr(config, n) != i.get_default(call_default_factory=True) for n, i in model.model_fields.items())
    assert from_args(model, parser_for(model).parse_args(argv(config))) == config


@pytest.mark.parametrize("model", list(CHANGED), ids=lambda m: m.__name__)
def test_absent_flags_are_the_model_defaults(model):
    required = ["--format", "onnx", "--quant", "fp32"] if model is ExportConfig else []
    parsed = from_args(model, parser_for(model).parse_args(required))
    assert parsed == model(**dict(zip(("format", "quant"), required[1::2])))
    assert BenchConfig().threads is None and BenchConfig().ssh_option == []  # all cores; no ssh options


def test_the_commands_parse_into_their_models():
    args = build_parser().parse_args(["bench", "m.gguf", "--threads", "1,2", "--ssh-option", "A=1", "--json"])
    assert from_args(BenchConfig, args) == BenchConfig(threads=[1, 2], ssh_option=["A=1"])
    args = build_parser().parse_args(["export", "m", "--format", "onnx", "--quant", "int4", "--out", "o",
                                      "--int4-head-bits", "4"])
    assert from_args(ExportConfig, args) == ExportConfig(format="onnx", quant="int4", int4_head_bits=4)
    assert (args.model, args.out, args.quiet, args.json) == ("m", "o", False, False)  # beside the model


def test_a_bad_value_is_one_line():
    with pytest.raises(ToolkitError) as err:
        from_args(BenchConfig, parser_for(BenchConfig).parse_args(["--threads", "one"]))
    assert str(err.value) == "--threads wants N or a list like 1,2,4, got 'one'"

    class Sized(BaseModel):
        reps: int = Field(5, ge=1, description="timed repetitions")

    with pytest.raises(ToolkitError) as err:
        from_args(Sized, argparse.Namespace(reps=0))
    assert str(err.value) == "--reps: input should be greater than or equal to 1, got 0"


def test_a_bad_value_through_the_cli_is_one_line_without_traceback(tmp_path):
    r = toolkit("bench", "m.gguf", "--threads", "1,x", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr == "error: --threads wants N or a list like 1,2,4, got '1,x'\n", r.stderr


def test_every_field_needs_a_description():
    class Undocumented(BaseModel):
        reps: int = 5

    with pytest.raises(TypeError, match="Undocumented.reps has no description"):
        add_flags(argparse.ArgumentParser(), Undocumented)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_lists_every_field_with_its_description(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "2000")  # one line per flag: descriptions are not wrapped
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, info in COMMANDS[command].model_fields.items():
        assert f"{flag_name(name)} " in text and " ".join(info.description.split()) in text, name
    for kept in ("model", "--out", "--quiet", "--json"):  # not config: the subject, the output, the display
        assert kept in text
