"""fastdino.eval: the weighted k-NN vote, the linear probe, the splits, and `fastdino eval` end to end."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from _eval_fixtures import make_checkpoint, make_image_folder, one_thread  # noqa: F401 (autouse)

from fastdino.cli import main
from fastdino.eval.features import EvalTransform, ImageDataset, extract_features
from fastdino.eval.knn import knn_accuracy, knn_predict
from fastdino.eval.linear import linear_probe_accuracy
from fastdino.eval.splits import stratified_split


def clusters(n_classes=10, per_class=30, dim=32, noise=0.1, seed=0):
    """L2-normalised points around random, well-separated class centres."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(n_classes, dim, generator=g), dim=1)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    x = centres[labels] + noise * torch.randn(len(labels), dim, generator=g)
    return F.normalize(x, dim=1), labels


# --- k-NN --------------------------------------------------------------------------------------------------
def test_knn_separates_well_separated_clusters():
    xtr, ytr = clusters(seed=0)
    xte, yte = clusters(seed=0, per_class=10)
    xte = F.normalize(xte + 0.05 * torch.randn(xte.shape, generator=torch.Generator().manual_seed(1)), dim=1)
    acc = knn_accuracy(xtr, ytr, xte, yte, 10, k=20, temperature=0.07)
    assert acc == {"top1": 100.0, "top5": 100.0}


def test_knn_on_random_labels_is_near_chance():
    xtr, _ = clusters(seed=0)
    ytr = torch.randint(0, 10, (len(xtr),), generator=torch.Generator().manual_seed(2))
    xte, yte = clusters(seed=3, per_class=20)
    assert knn_accuracy(xtr, ytr, xte, yte, 10)["top1"] < 30


def _circle(deg):
    return torch.tensor([math.cos(math.radians(deg)), math.sin(math.radians(deg))])


def test_knn_weighted_vote_by_hand():
    # Query at 0 deg; one class-0 neighbour at 0 deg, two class-1 neighbours at +-theta.
    # Votes: class 0 = exp(1/T), class 1 = 2 exp(cos(theta)/T): the nearer neighbour outweighs two farther ones
    # exactly when cos(theta) < 1 - T ln 2.
    query = _circle(0)[None]
    labels = torch.tensor([0, 1, 1])
    for theta, winner in ((10, 1), (30, 0)):
        train = torch.stack([_circle(0), _circle(theta), _circle(-theta)])
        scores = knn_predict(train, labels, query, 2, k=3, temperature=0.07)
        expected = torch.tensor([[math.exp(1 / 0.07), 2 * math.exp(math.cos(math.radians(theta)) / 0.07)]])
        torch.testing.assert_close(scores, expected, rtol=1e-5, atol=0)
        assert scores.argmax().item() == winner
    # A high temperature flattens the weights: the majority wins at 30 deg too.
    train = torch.stack([_circle(0), _circle(30), _circle(-30)])
    assert knn_predict(train, labels, query, 2, k=3, temperature=10.0).argmax().item() == 1
    # k=1: only the nearest votes.
    torch.testing.assert_close(knn_predict(train, labels, query, 2, k=1), torch.tensor([[math.exp(1 / 0.07), 0.0]]))


def test_knn_chunks_give_the_same_scores():
    xtr, ytr = clusters(seed=0)
    xte, _ = clusters(seed=4, per_class=7)
    a = knn_predict(xtr, ytr, xte, 10, chunk_size=1000)
    b = knn_predict(xtr, ytr, xte, 10, chunk_size=13)
    torch.testing.assert_close(a, b)


def test_knn_rejects_mismatched_features():
    with pytest.raises(ValueError, match="same D"):
        knn_predict(torch.randn(5, 4), torch.zeros(5), torch.randn(3, 8), 2)
    with pytest.raises(ValueError, match="--k 0"):
        knn_predict(torch.randn(5, 4), torch.zeros(5), torch.randn(3, 4), 2, k=0)


# --- linear probe ------------------------------------------------------------------------------------------
def test_linear_probe_learns_a_separable_set_deterministically():
    # Labels are the sign pattern of two coordinates: linearly separable, with a margin, but not clustered.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 16, generator=g)
    x[:, :2] += 0.5 * x[:, :2].sign()
    y = (x[:, 0] > 0).long() * 2 + (x[:, 1] > 0).long()
    kwargs = dict(epochs=30, batch_size=32, seed=0)
    a = linear_probe_accuracy(x[:400], y[:400], x[400:], y[400:], 4, **kwargs)
    b = linear_probe_accuracy(x[:400], y[:400], x[400:], y[400:], 4, **kwargs)
    assert a["top1"] >= 99.0 and a["train_top1"] >= 99.0
    assert a == b


def test_linear_probe_needs_an_epoch():
    with pytest.raises(ValueError, match="--epochs 0"):
        linear_probe_accuracy(torch.randn(4, 2), torch.zeros(4), torch.randn(2, 2), torch.zeros(2), 2, epochs=0)


# --- splits and features -----------------------------------------------------------------------------------
def test_stratified_split_is_deterministic_disjoint_and_stratified():
    labels = [0] * 50 + [1] * 30 + [2] * 5
    train, test = stratified_split(labels, 0.2, seed=0)
    assert (train, test) == stratified_split(labels, 0.2, seed=0)
    assert sorted(train + test) == list(range(len(labels)))
    assert [sum(labels[i] == c for i in test) for c in range(3)] == [10, 6, 1]


def test_undecodable_image_is_named(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    dataset = ImageDataset([bad], [0], EvalTransform(32, (0.5,) * 3, (0.5,) * 3))
    with pytest.raises(ValueError, match="broken.jpg does not decode"):
        dataset[0]


def test_extract_features_are_l2_normalised_and_ordered(tmp_path):
    folder = make_image_folder(tmp_path / "data", per_class=3, size=16)
    paths = sorted(folder.glob("*/*.png"))
    dataset = ImageDataset(paths, list(range(len(paths))), EvalTransform(24, (0.5,) * 3, (0.25,) * 3))
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 24 * 24, 8))
    feats, labels = extract_features(backbone, dataset, batch_size=4)
    assert feats.shape == (len(paths), 8)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(len(paths)))
    assert labels.tolist() == list(range(len(paths)))


# --- the command line --------------------------------------------------------------------------------------
def test_eval_knn_and_linear_end_to_end(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", per_class=6, size=32)
    ckpt = make_checkpoint(tmp_path / "run", img_size=32)
    assert main(["eval", "knn", "--checkpoint", str(ckpt), "--data", str(data), "--k", "5"]) == 0
    out = capsys.readouterr().out
    assert "split deterministically" in out and "top-1" in out
    result = json.loads((ckpt.parent / "last_knn.json").read_text())
    assert result["n_train"] + result["n_test"] == 18 and result["k"] == 5 and 0 <= result["top1"] <= 100
    assert result["image_size"] == 32 and result["random_init"] is False

    # The linear probe reuses the cached features: no second extraction.
    cached = sorted((ckpt.parent / "eval_cache").glob("*.pt"))
    assert len(cached) == 2
    assert main(["eval", "linear", "--checkpoint", str(ckpt), "--data", str(data), "--epochs", "5"]) == 0
    assert "reusing" in capsys.readouterr().out
    assert json.loads((ckpt.parent / "last_linear.json").read_text())["epochs"] == 5

    assert main(["eval", "knn", "--checkpoint", str(ckpt), "--data", str(data), "--random-init"]) == 0
    random = json.loads((ckpt.parent / "last_knn_random-init.json").read_text())
    assert random["random_init"] is True
    capsys.readouterr()

    # Random-init features depend on the architecture only: another checkpoint of it reuses them.
    other = make_checkpoint(tmp_path / "run2", img_size=32)
    argv = ["eval", "linear", "--checkpoint", str(other), "--data", str(data), "--random-init", "--epochs", "2",
            "--cache-dir", str(ckpt.parent / "eval_cache")]
    assert main(argv) == 0
    assert capsys.readouterr().out.count("reusing") == 2


def test_eval_with_list_files(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", per_class=4, size=32)
    files = sorted(p.relative_to(data).as_posix() for p in data.glob("*/*.png"))
    (tmp_path / "train.txt").write_text("\n".join(f for i, f in enumerate(files) if i % 4) + "\n")
    (tmp_path / "test.txt").write_text("\n".join(f for i, f in enumerate(files) if i % 4 == 0) + "\n")
    ckpt = make_checkpoint(tmp_path / "run", img_size=32)
    argv = ["eval", "knn", "--checkpoint", str(ckpt), "--data", str(data), "--train-list", str(tmp_path / "train.txt"),
            "--test-list", str(tmp_path / "test.txt"), "--output", str(tmp_path / "r.json")]
    assert main(argv) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert (result["n_train"], result["n_test"]) == (9, 3)
    assert result["classes"] == ["class0", "class1", "class2"]


# --- errors ------------------------------------------------------------------------------------------------
def test_eval_errors_name_the_problem(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", per_class=2, size=32)
    ckpt = make_checkpoint(tmp_path / "run", img_size=32)
    base = ["eval", "knn", "--data", str(data)]

    assert main(base + ["--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "--checkpoint" in capsys.readouterr().err

    (tmp_path / "train.txt").write_text("class0/img0.png\nclass0/missing.png\n")
    (tmp_path / "test.txt").write_text("class1/img0.png\n")
    assert main(base + ["--checkpoint", str(ckpt), "--train-list", str(tmp_path / "train.txt"),
                        "--test-list", str(tmp_path / "test.txt")]) == 2
    err = capsys.readouterr().err
    assert "missing.png" in err and "does not exist" in err

    assert main(base + ["--checkpoint", str(ckpt), "--train-list", str(tmp_path / "train.txt")]) == 2
    assert "--test-list" in capsys.readouterr().err

    (data / "class0" / "img0.png").write_bytes(b"\x89PNG broken")
    assert main(base + ["--checkpoint", str(ckpt), "--no-cache"]) == 2
    assert "img0.png does not decode" in capsys.readouterr().err


def test_checkpoint_of_another_architecture_names_the_arch(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", per_class=2, size=32)
    # Weights of a ViT-Tiny under a config that says ViT-Small.
    ckpt = make_checkpoint(tmp_path / "run", img_size=32, config_model={"arch": "vit_small"})
    assert main(["eval", "knn", "--checkpoint", str(ckpt), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "'vit_small'" in err and "another architecture" in err


def test_an_empty_split_is_refused_before_the_checkpoint_is_read(tmp_path, capsys, monkeypatch):
    import fastdino.cli.eval

    def never(*args, **kwargs):
        raise AssertionError("the checkpoint was read before the split was checked")

    monkeypatch.setattr(fastdino.cli.eval, "load_backbone", never)
    data = make_image_folder(tmp_path / "data", per_class=1, size=32)  # one image a class: nothing left to test on
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    assert main(["eval", "knn", "--checkpoint", str(ckpt), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "the test split is empty" in err and "3 classes of 1 image each" in err
    assert not ckpt.parent.exists()
