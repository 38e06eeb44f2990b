"""Step checkpoints: an interrupted training resumes from its latest checkpoint and ends with the same weights."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from tests.conftest import kill_when, toolkit, write_tiny_recipe
from toolkit.core.recipe import TrainConfig
from toolkit.training.train import BatchOrder, tokenize_example, train

QUESTIONS = [("Tom has 3 apples and buys 5 more. How many apples does he have?", "3 + 5 = 8. The answer is 8."),
             ("A baker makes 24 muffins and sells 18. How many are left?", "24 - 18 = 6. The answer is 6."),
             ("Each box holds 7 pencils. How many pencils are in 4 boxes?", "4 * 7 = 28. The answer is 28."),
             ("What is 2 plus 3?", "2 + 3 = 5. The answer is 5.")]


class Stop(Exception):
    pass


def _examples(tok):
    return [tokenize_example(tok, [{"role": "user", "content": q}], a, 128) for q, a in QUESTIONS] * 3


def _fresh(tiny_model_dir):
    from toolkit.runtime.loading import load_model_and_tokenizer
    from toolkit.runtime.models import resolve_model

    return load_model_and_tokenizer(resolve_model(str(tiny_model_dir)))


def test_batch_order_restores_mid_epoch():
    a = BatchOrder(7, 2, seed=3)
    seen = [a.next() for _ in range(5)]  # into the second epoch
    b = BatchOrder(7, 2, seed=3)
    b.restore(a.state())
    assert [a.next() for _ in range(9)] == [b.next() for _ in range(9)]
    assert sorted(i for batch in seen[:4] for i in batch) == list(range(7))


def test_interrupted_training_resumes_to_the_same_weights(tiny_model_dir, tmp_path):
    cfg = TrainConfig(max_steps=9, batch_size=2, seq_len=128, lr=3e-3, threads=1, checkpoint_every=2)
    model, tok = _fresh(tiny_model_dir)
    ref = train(model, tok, _examples(tok), cfg, tmp_path / "ref", seed=1)
    ref_params = [p.detach().clone() for p in model.parameters()]

    def stop_at_5(row: dict) -> None:
        if row["step"] == 5:  # after step 5: the checkpoint of step 4 is the latest
            raise Stop

    model, tok = _fresh(tiny_model_dir)
    with pytest.raises(Stop):
        train(model, tok, _examples(tok), cfg, tmp_path / "student", seed=1, log=stop_at_5)
    assert (tmp_path / "student.checkpoint" / "state.pt").is_file()
    assert not (tmp_path / "student").exists()

    model, tok = _fresh(tiny_model_dir)
    stats = train(model, tok, _examples(tok), cfg, tmp_path / "student", seed=1)
    assert stats["resumed_from_step"] == 4
    assert [r["loss"] for r in stats["curve"]] == [r["loss"] for r in ref["curve"]]
    for p, q in zip(model.parameters(), ref_params):
        torch.testing.assert_close(p, q, atol=0, rtol=0)  # CPU, same ops in the same order: bitwise
    assert not (tmp_path / "student.checkpoint").exists()  # removed once the folder is saved


def test_checkpoint_of_other_data_is_not_resumed(tiny_model_dir, tmp_path):
    cfg = TrainConfig(max_steps=4, batch_size=2, seq_len=128, lr=3e-3, threads=1, checkpoint_every=2)
    _interrupted(tiny_model_dir, tmp_path, cfg)
    model, tok = _fresh(tiny_model_dir)
    stats = train(model, tok, _examples(tok)[:5], cfg, tmp_path / "student", seed=1)
    assert "resumed_from_step" not in stats


def _safetensors(path):
    from safetensors.torch import load_file

    return load_file(path)


def test_kill_9_during_training_resumes_from_the_step_checkpoint(tmp_path, tiny_model_dir, teacher_server):
    """A real `toolkit distill` killed after a step checkpoint resumes from it, to an uninterrupted run's weights."""
    overrides = ["train.max_steps=100", "train.checkpoint_every=4", "train.lr=1e-3"]
    ref_dir, work = tmp_path / "ref", tmp_path / "killed"
    ref_dir.mkdir()
    work.mkdir()
    # Both runs share the teacher cache: the killed run gets the reference's rationales, so the
    # training data are the same and only the interruption differs.
    ref = toolkit("distill", str(write_tiny_recipe(ref_dir, tiny_model_dir, teacher_server.base_url)),
                  *overrides, cwd=ref_dir)
    assert ref.returncode == 0, ref.stderr

    recipe = write_tiny_recipe(work, tiny_model_dir, teacher_server.base_url)
    cmd = [sys.executable, "-m", "toolkit.cli", "distill", str(recipe), *overrides]
    state = work / "runs" / "tiny" / "round-0" / "student.checkpoint" / "state.pt"
    kill_when(cmd, work, state.is_file, poll_s=0.02)  # at the first step checkpoint
    assert not (work / "runs" / "tiny" / "round-0" / "student").exists(), "killed after training finished"

    again = toolkit("distill", str(recipe), *overrides, cwd=work)
    assert again.returncode == 0, again.stderr
    stage = json.loads((work / "runs" / "tiny" / "manifest.json").read_text())["stages"]["round-0/train"]
    assert stage["resumed_from_step"] >= 4 and stage["resumed_from_step"] % 4 == 0
    assert f"resumed from step {stage['resumed_from_step']} of 100" in again.stdout
    assert not state.parent.exists()
    got = _safetensors(work / "runs" / "tiny" / "round-0" / "student" / "model.safetensors")
    want = _safetensors(ref_dir / "runs" / "tiny" / "round-0" / "student" / "model.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=0)
    log = [json.loads(line) for line in (work / "runs" / "tiny" / "round-0" / "train_log.jsonl").open()]
    assert [r["step"] for r in log] == list(range(1, 101))  # the curve before the kill is kept


class _Planted:
    """What a hostile `state.pt` holds: unpickling it runs code (here: writes a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def _interrupted(tiny_model_dir, tmp_path, cfg):
    model, tok = _fresh(tiny_model_dir)

    def stop_at_3(row: dict) -> None:
        if row["step"] == 3:
            raise Stop

    with pytest.raises(Stop):
        train(model, tok, _examples(tok), cfg, tmp_path / "student", seed=1, log=stop_at_3)
    state = tmp_path / "student.checkpoint" / "state.pt"
    assert state.is_file()
    return state


def test_a_planted_checkpoint_never_runs_code(tiny_model_dir, tmp_path):
    """A state.pt that would run code when unpickled (multi-node runs share the run folder) is loaded data-only,
    after the fingerprint check: the resume ends in one clear error and the code never runs."""
    from toolkit.core.errors import ToolkitError

    cfg = TrainConfig(max_steps=4, batch_size=2, seq_len=128, lr=3e-3, threads=1, checkpoint_every=2)
    state = _interrupted(tiny_model_dir, tmp_path, cfg)
    marker = tmp_path / "code-ran"
    torch.save({"params": _Planted(marker), "step": 2}, state)  # beside the real run's fingerprint
    model, tok = _fresh(tiny_model_dir)
    with pytest.raises(ToolkitError) as err:
        train(model, tok, _examples(tok), cfg, tmp_path / "student", seed=1)
    assert not marker.exists()
    msg = str(err.value)
    assert str(state) in msg and "not loaded" in msg and "\n" not in msg
    assert state.is_file()  # left for the user to look at; the message says what to delete
    state.write_bytes(state.read_bytes()[:1000])  # damaged (cut short): the same kind of one-line error
    with pytest.raises(ToolkitError, match=r"state\.pt was not loaded: it is damaged .*delete .*student\.checkpoint"):
        train(model, tok, _examples(tok), cfg, tmp_path / "student", seed=1)


def test_a_checkpoint_without_our_fingerprint_is_never_unpickled(tiny_model_dir, tmp_path):
    """A state.pt alone (planted, or from before fingerprints were kept beside it) is not opened at all: the
    training starts from step 0 and replaces it."""
    cfg = TrainConfig(max_steps=4, batch_size=2, seq_len=128, lr=3e-3, threads=1, checkpoint_every=2)
    state = _interrupted(tiny_model_dir, tmp_path, cfg)
    for other in state.parent.iterdir():
        if other != state:
            other.unlink()
    marker = tmp_path / "code-ran"
    torch.save({"params": _Planted(marker), "step": 2}, state)
    model, tok = _fresh(tiny_model_dir)
    stats = train(model, tok, _examples(tok), cfg, tmp_path / "student", seed=1)
    assert not marker.exists() and "resumed_from_step" not in stats and stats["steps"] == 4


@pytest.mark.parametrize("meta", ['{"kind": ' * 30000 + "1" + "}" * 30000, "[" * 60000, '["toolkit-train-checkpoint"]'])
def test_a_hostile_fingerprint_file_is_no_fingerprint(tmp_path, meta):
    """state.json comes from the shared run folder: nested past the limit (json.loads raised RecursionError) or
    not an object, it counts as no fingerprint, so state.pt is never opened and training starts over."""
    from toolkit.training.train import Checkpoint

    checkpoint = Checkpoint(tmp_path / "student.checkpoint", "fp")
    checkpoint.save({"step": 2})
    checkpoint.meta.write_text(meta)
    assert checkpoint.load() is None
