"""Networks, ideal training and checkpoints."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from torch import nn

from labkit.train import checkpoint as C
from labkit.train import networks as N
from labkit.train import training as T
from labkit.train.datasets import DatasetNotFoundError

PLAIN = (nn.Sequential, nn.Linear, nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten)


@pytest.fixture(scope="module")
def digits():
    return N.dataset_for("mlp")


@pytest.mark.parametrize("name, shape", [
    ("mlp", (5, 16)), ("mlp", (5, 1, 4, 4)), ("lenet5", (5, 1, 28, 28)), ("vgg", (5, 3, 32, 32)),
])
def test_forward_shapes_and_plain_layers(name, shape):
    torch.manual_seed(0)
    model = N.build(name)
    out = model(torch.rand(shape))
    assert out.shape == (5, 10)
    assert all(isinstance(m, PLAIN) for m in model.modules()), "converter needs plain layers"
    # every weight layer is followed by a ReLU except the last (non-negative activations)
    kinds = [type(m) for m in model if not isinstance(m, (nn.Flatten, nn.MaxPool2d))]
    for a, b in zip(kinds, kinds[1:]):
        if a in (nn.Linear, nn.Conv2d):
            assert b is nn.ReLU
    assert kinds[-1] is nn.Linear


def test_lenet5_is_the_classic_architecture():
    model = N.lenet5()
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    fcs = [m for m in model if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 6, (5, 5), (2, 2)), (6, 16, (5, 5), (0, 0))]
    assert [(f.in_features, f.out_features) for f in fcs] == [(400, 120), (120, 84), (84, 10)]
    assert sum(p.numel() for p in model.parameters()) == 61706


def test_vgg_small_is_small_enough_for_a_cpu():
    model = N.vgg_small()
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    assert N.vgg_small(widths=(16, 32), convs_per_block=1, pool="avg")(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_registry_and_bad_names():
    assert set(N.NETWORKS) == {"mlp", "lenet5", "vgg"} == set(N.DEFAULTS)
    with pytest.raises(ValueError, match="'resnet'"):
        N.build("resnet")
    with pytest.raises(ValueError, match="'resnet'"):
        N.dataset_for("resnet")
    with pytest.raises(ValueError, match="pool='min'"):
        N.lenet5(pool="min")
    with pytest.raises(ValueError, match="hidden=0"):
        N.mlp_lowres(hidden=0)


def test_dataset_for_each_network(tmp_path):
    assert N.dataset_for("mlp", subset=10).input_shape == (16,)
    assert N.dataset_for("lenet5", subset=10).input_shape == (1, 28, 28)
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path)):
        N.dataset_for("vgg", tmp_path)


def test_mlp_trains_on_4x4_digits_deterministically(digits):
    results, weights = [], []
    for _ in range(2):
        torch.manual_seed(0)
        model = N.mlp_lowres()
        seen = []
        r = T.train(model, digits.train, digits.test, epochs=20, lr=3e-3, batch_size=32,
                    seed=0, progress=lambda e, n, h: seen.append((e, n, h["test_accuracy"])))
        results.append(r)
        weights.append(model[1].weight.detach().clone())
    r = results[0]
    assert r["accuracy"] > 0.8  # ~0.86-0.88 over seeds; chance is 0.1
    assert r["accuracy"] == pytest.approx(T.evaluate(model, digits.test))
    assert len(r["history"]) == 20 and [s[0] for s in seen] == list(range(1, 21))
    assert r["history"][-1]["loss"] < r["history"][0]["loss"]
    strip = lambda hist: [{k: v for k, v in h.items() if k != "seconds"} for h in hist]  # noqa: E731
    assert strip(results[1]["history"]) == strip(r["history"])
    assert torch.equal(weights[0], weights[1])


def test_train_rejects_bad_settings(digits):
    model = N.mlp_lowres()
    with pytest.raises(ValueError, match="epochs=0"):
        T.train(model, digits.train, digits.test, epochs=0)
    with pytest.raises(ValueError, match="lr=-1"):
        T.train(model, digits.train, digits.test, epochs=1, lr=-1)


def test_checkpoint_round_trip_with_weights_only(tmp_path, digits):
    torch.manual_seed(1)
    model = N.mlp_lowres(hidden=16)
    T.train(model, digits.train, None, epochs=2, lr=3e-3, batch_size=64, seed=1)
    meta = {"network_kwargs": {"hidden": 16}, "accuracy": 0.5, "dataset": "digits4x4",
            "tags": ["ideal", 1, None]}
    path = C.save_checkpoint(tmp_path / "ckpt" / "mlp.pt", "mlp", model, meta)
    raw = torch.load(path, weights_only=True)  # loadable without any pickle code
    assert raw["model_name"] == "mlp"
    ckpt = C.load_checkpoint(path)
    assert ckpt.model_name == "mlp" and ckpt.meta == meta
    rebuilt = ckpt.build()
    x = digits.test.tensors[0][:50]
    torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)
    assert T.evaluate(rebuilt, digits.test) == T.evaluate(model, digits.test)


def test_checkpoint_meta_must_be_plain(tmp_path):
    with pytest.raises(ValueError, match="meta\\['when'\\]"):
        C.save_checkpoint(tmp_path / "x.pt", "mlp", N.mlp_lowres(), {"when": object()})
    assert not (tmp_path / "x.pt").exists()


class _Shell:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_load_checkpoint_refuses_code_and_foreign_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    torch.save({"format": "labkit-checkpoint", "x": _Shell()}, evil)
    with pytest.raises(ValueError, match="not a labkit checkpoint"):
        C.load_checkpoint(evil)
    assert not (tmp_path / "pwned.txt").exists()
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a labkit checkpoint"):
        C.load_checkpoint(other)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        C.load_checkpoint(tmp_path / "missing.pt")
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(_Shell(), protocol=2))
    with pytest.raises(ValueError):
        C.load_checkpoint(plain)
    assert not (tmp_path / "pwned.txt").exists()
