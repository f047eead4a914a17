"""Real data and model loading: disjoint splits, seeded, nothing pickled."""
import pickle

import numpy as np
import pytest

from bitalloc import BitallocError
from bitalloc.cli.app import main
from bitalloc.zoo.corpus import digits_split, pydoc_split, sentences, token_windows


def test_pydoc_split_is_disjoint_and_seeded():
    cal, held = pydoc_split(0)
    assert cal and held and cal != held
    assert pydoc_split(0) == (cal, held) and pydoc_split(1) != (cal, held)
    from pydoc_data.topics import topics

    where = [(t in cal) + (t in held) for t in topics.values()]
    assert where == [1] * len(topics)  # every topic in exactly one split


def test_token_windows_and_sentences_are_distinct_and_bounded():
    ids = np.arange(10_000)
    w = token_windows(ids, 8, 64, seed=3)
    assert w.shape == (8, 64) and len({tuple(r) for r in w.tolist()}) == 8
    assert (np.diff(w, axis=1) == 1).all()  # contiguous windows of the stream
    with pytest.raises(BitallocError, match="samples"):
        token_windows(ids, 10_000, 64, seed=0)
    s = sentences(pydoc_split(0)[0], 5, seed=0)
    assert len(set(s)) == 5 and all(40 <= len(x) <= 400 for x in s)


def test_digits_split_is_disjoint():
    xtr, ytr, xte, yte = digits_split(0)
    assert len(ytr) + len(yte) == 1797 and xtr.shape[1:] == (1, 8, 8)
    assert xtr.max() <= 1.0 and set(np.unique(ytr)) == set(range(10))


def test_digits_task_is_trained_cached_and_accurate(tmp_path, monkeypatch):
    monkeypatch.setenv("BITALLOC_CACHE", str(tmp_path))
    from bitalloc.zoo.demo import load_task

    t = load_task("digits-cnn", samples=128)
    assert t.quality(t.model)["accuracy"] > 0.95
    assert list(tmp_path.glob("digits-cnn-*.safetensors"))  # cached as safetensors
    t2 = load_task("digits-cnn", samples=128)
    for a, b in zip(t.model.parameters(), t2.model.parameters()):
        assert (a == b).all()
    assert t.macs["conv2"] == 16 * 32 * 9 * 8 * 8  # per image: weights x output positions
    assert [u.n_params for u in t.units()] == [144, 4608, 32768, 640]


def test_pickled_checkpoint_is_refused(tmp_path):
    import torch

    from bitalloc.zoo.demo import load_state_dict

    class Evil:
        def __reduce__(self):
            return (print, ("this would run",))

    bad = tmp_path / "model.pt"
    with open(bad, "wb") as f:
        pickle.dump({"w": Evil()}, f)
    with pytest.raises(BitallocError, match="refused"):
        load_state_dict(bad)
    good = tmp_path / "ok.pt"
    torch.save({"w": torch.ones(2)}, good)
    assert load_state_dict(good)["w"].sum() == 2
    with pytest.raises(BitallocError, match="no such file"):
        load_state_dict(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("argv, field", [
    (["--model", "gpt5", "--estimator", "fisher"], "--model"),
    (["--model", "digits-cnn", "--estimator", "oracle"], "estimator"),
    (["--model", "digits-cnn", "--estimator", "fisher", "--granularity", "row"], "--granularity"),
    (["--model", "digits-cnn", "--estimator", "fisher", "--group-size", "0"], "--group-size"),
    (["--model", "digits-cnn", "--estimator", "fisher", "--samples", "0"], "--samples"),
    (["--model", "digits-cnn", "--estimator", "fisher", "--bits", "2,x"], "--bits"),
    (["--model", "digits-cnn", "--estimator", "weight_error", "--granularity", "group", "--group-size", "64"],
     "group_size"),
    (["--model", "digits-cnn", "--estimator", "weight_error", "--option", "probes=3"], "option"),
])
def test_profile_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, field):
    out = tmp_path / "p.json"
    assert main(["profile", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 or (len(err) == 2 and err[0].startswith("loading")), err
    assert field in err[-1] and "Traceback" not in err[-1]
    assert not out.exists()


def test_profile_command_feeds_solve(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["profile", "--model", "digits-cnn", "--estimator", "weight_error", "--granularity", "channel",
                 "--out", str(out)]) == 0
    assert main(["solve", "--profile", str(out), "--budget", "3.5", "--json"]) == 0
    import json

    alloc = json.loads(capsys.readouterr().out)
    assert alloc["status"] == "optimal" and alloc["avg_bits"] <= 3.5
    assert len(alloc["bits"]) == 16 + 32 + 64 + 10  # one unit per output channel
