"""What the generator's and the recognizer's trainers share (synthface.training): one epoch order,
one precision rule, one resume check, torch's thread count restored."""

from __future__ import annotations

import pytest
import torch

from synthface.errors import ConfigError, InputError
from synthface.training import (
    EpochSampler,
    ProcessEpochSampler,
    check_resume,
    epoch_permutation,
    recipe_changes,
    resolve_precision,
    torch_threads,
)


def test_both_samplers_draw_the_same_epoch_order():
    n, seed = 24, 5
    stream = EpochSampler(n, seed)
    first, second = stream.take(n), stream.take(n)
    assert torch.equal(first, epoch_permutation(n, seed, 0)) and torch.equal(second, epoch_permutation(n, seed, 1))
    assert not torch.equal(first, second)  # a fresh order each epoch
    per_process = ProcessEpochSampler(n, seed, per_process=4)
    per_process.set_epoch(1)
    assert list(per_process) == second.tolist()  # 24 = 6 whole batches of 4: nothing dropped
    assert not torch.equal(epoch_permutation(n, seed + 1, 0), first)


def test_the_stream_sampler_resumes_where_it_stopped():
    a = EpochSampler(10, 3)
    a.take(7)
    b = EpochSampler(10, 3)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.take(9), b.take(9))  # across the epoch boundary too
    with pytest.raises(ValueError, match="another data set"):
        EpochSampler(11, 3).load_state_dict(a.state_dict())


def test_one_precision_rule():
    assert resolve_precision("auto", "cpu") == "no"
    assert resolve_precision("no", "cpu") == "no"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", "cpu")
    assert resolve_precision("fp16", "cuda") == "fp16"


def test_the_resume_check(tmp_path):
    assert check_resume(tmp_path, holds_run=False, resume=False) is False
    assert check_resume(tmp_path, holds_run=False, resume=True) is False  # nothing to continue: a fresh run
    assert check_resume(tmp_path, holds_run=True, resume=True) is True
    with pytest.raises(InputError, match="pass --resume"):
        check_resume(tmp_path, holds_run=True, resume=False)
    saved = {"train": {"lr": 0.1, "log_every": 10}, "seed": 0}
    now = {"train": {"lr": 0.2, "log_every": 5}, "seed": 0}
    assert recipe_changes(saved, now) == ["train.log_every", "train.lr"]
    assert recipe_changes(saved, now, free={"train.log_every"}) == ["train.lr"]


def test_thread_count_is_restored_even_on_error():
    before = torch.get_num_threads()
    with torch_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with torch_threads(before + 1):
            assert torch.get_num_threads() == before + 1
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
