"""The judge networks: architecture, feature path, schedule, training on tiny data, and a wrong-resolution guard."""

import numpy as np
import pytest
import torch

from pagoda import judge
from pagoda.data import load_dataset, to_model


def test_features_are_the_pooled_penultimate_layer_of_the_classifier():
    torch.manual_seed(0)
    net = judge.JudgeCNN(in_channels=1, num_classes=10, resolution=16, width=4, feature_dim=12).eval()
    x = torch.rand(5, 1, 16, 16) * 2 - 1
    f = net.features(x)
    assert f.shape == (5, 12)
    torch.testing.assert_close(f, net.body(x).mean(dim=(2, 3)))
    torch.testing.assert_close(net(x), net.head(f))
    # 16 -> 8 -> 4: two pooling stages, then the feature conv; no depthwise convolutions anywhere.
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3 and all(c.groups == 1 for c in convs)
    assert [c.out_channels for c in convs] == [4, 8, 12]


def test_image_features_match_features_and_refuse_another_resolution():
    torch.manual_seed(0)
    net = judge.JudgeCNN(in_channels=1, resolution=8, width=4, feature_dim=6).eval()
    images = (np.random.default_rng(0).random((7, 1, 8, 8)) * 255).astype(np.uint8)
    f = judge.image_features(net, images, batch_size=3)
    np.testing.assert_allclose(f, net.features(to_model(images)).detach().double().numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="every resolution has its own judge"):
        judge.image_features(net, np.zeros((2, 1, 16, 16), np.uint8))


def test_learning_rate_warms_up_then_decays_to_zero():
    lrs = [judge.learning_rate(s, total_steps=100, lr=1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # 10 warm-up steps
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # then never increases
    assert lrs[-1] < 0.001


def top_or_bottom(folder, n, seed):
    """16x16 grey images with a bright bar in the top (class 0) or bottom (class 1) half, plus noise: a task a
    working classifier learns in a few dozen steps, and one that survives horizontal flips."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = (rng.random((n, 1, 16, 16)) * 60).astype(np.uint8)
    for im, c in zip(images, labels):
        y = rng.integers(1, 5) + 8 * c
        im[0, y:y + 3, rng.integers(0, 6):rng.integers(10, 16)] = 230
    return images, labels


def test_trained_judge_learns_a_learnable_task_and_round_trips(tmp_path):
    for split, n, seed in (("train", 64, 0), ("test", 40, 1)):
        images, labels = top_or_bottom(tmp_path, n, seed)
        np.savez(tmp_path / f"{split}_16.npz", images=images, labels=labels, classes=np.array(["top", "bottom"]))
    summary = judge.train_judge(data_dir=tmp_path, resolution=16, run_dir=tmp_path / "run", out_path=tmp_path / "j.pt",
                                steps=40, batch_size=16, lr=3e-3, width=8, feature_dim=16, progress=False, device="cpu")
    assert summary["test_accuracy"] >= 0.9  # held-out images, chance is 0.5
    net, meta = judge.load_judge(tmp_path / "j.pt")
    x, y, _ = load_dataset(tmp_path, "test", 16)
    assert float((judge.predict(net, to_model(x)) == torch.as_tensor(y)).float().mean()) == summary["test_accuracy"]
    assert meta["test_accuracy"] == summary["test_accuracy"] and meta["resolution"] == 16
    assert summary["steps"] == 40 and summary["seconds"] > 0 and summary["feature_dim"] == 16
    assert not any(p.requires_grad for p in net.parameters())
