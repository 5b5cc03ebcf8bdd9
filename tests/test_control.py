"""The positive-control CLIPs (helpers/control.py): data, loss, reproducible
training, the committed weights and their loading through load_model."""

import json

import numpy as np
import pytest
import torch

from helpers import control as C
from helpers import models, stimuli


def _state(cfg):
    res = C.train(cfg, progress=False, eval_n=0)
    return {k: v.clone() for k, v in res.model.state_dict().items()}, [h["loss"] for h in res.history]


def test_training_steps_bit_reproducible_for_a_seed_and_differ_for_another():
    cfg = C.TrainConfig("spatial", seed=3, steps=2, batch_size=6, warmup=1)
    a, la = _state(cfg)
    b, lb = _state(cfg)
    c, lc = _state(C.TrainConfig("spatial", seed=4, steps=2, batch_size=6, warmup=1))
    assert la == lb
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert la != lc
    assert not all(torch.equal(a[k], c[k]) for k in a)
    # training changed the weights
    init = C.build_model(3).state_dict()
    assert not torch.equal(a["visual.conv1.weight"], init["visual.conv1.weight"])


def test_architecture_has_vit_b32_token_geometry():
    m = C.build_model(0)
    x = C.to_input(np.full((1, 224, 224, 3), 255, np.uint8))
    tokens = []
    h = m.visual.transformer.resblocks[9].register_forward_hook(lambda mod, i, o: tokens.append(o.shape))
    with torch.no_grad():
        m.encode_image(x)
    h.remove()
    assert len(m.visual.transformer.resblocks) == 12
    assert tokens[0][:2] == (1, 50) and 128 <= tokens[0][2] <= 256
    assert m.visual.conv1.kernel_size == (32, 32) and m.visual.conv1.stride == (32, 32)


def test_to_input_equals_open_clip_preprocess_of_the_rendered_stimulus():
    stim = stimuli.make_stimuli(3, seed=1, shapes=("circle", "triangle"), colours=("red", "black"))
    pre = __import__("open_clip").image_transform(224, is_train=False)
    ref = torch.stack([pre(stimuli.render_pil(stim, i)) for i in range(3)])
    got = C.to_input(np.stack([stimuli.render(stim, i) for i in range(3)]))
    assert torch.allclose(got, ref, atol=1e-6)


def test_sample_batch_is_seeded_and_only_the_spatial_vocabulary_names_locations():
    sp = C.TrainConfig("spatial", batch_size=200)
    ns = C.TrainConfig("nonspatial", batch_size=200)
    a, b = C.sample_batch(sp, [0, 5]), C.sample_batch(sp, [0, 5])
    assert np.array_equal(a.images, b.images) and np.array_equal(a.shape, b.shape)
    assert not np.array_equal(a.images, C.sample_batch(sp, [0, 6]).images)
    # same seed, same images in both variants: only the vocabulary differs
    assert np.array_equal(C.sample_batch(ns, [0, 5]).images, a.images)
    vs, vn = C.vocabulary("spatial"), C.vocabulary("nonspatial")
    assert len(vs) == len(set(vs)) == 1 + 3 * 5 * 10 and len(vn) == 1 + 3 * 5
    assert not any(" in the " in C.caption(*u) for u in vn) and set(vn) < set(vs)
    named = [u for u in vs if u[2] >= 0]
    assert len(named) == 3 * 5 * 9 and all(C.caption(*u).endswith(C.LOCATIONS[u[2]]) for u in named)
    # every image has a true caption naming its true cell (spatial), and exactly one true empty caption
    pos = C.positives(a, vs)
    assert pos.any(1).all()
    empty = a.shape == ""
    assert empty.any() and (a.images[empty] == 255).all()
    assert (pos[empty].sum(1) == 1).all() and pos[empty][:, vs.index(("", "", -1))].all()
    cells = np.array([u[2] for u in vs])
    true_cells = np.where(pos[~empty][:, cells >= 0], cells[cells >= 0], -1).max(1)
    assert np.array_equal(true_cells, C.cell_of(a.x, a.y)[~empty])
    # a rendered shape is visible in its own image (not only at clipped edges)
    assert (a.images[~empty].min(axis=(1, 2, 3)) < 255).mean() > 0.95


def _batch(shape, colour, cell):
    """A labels-only batch (1-px images): what positives() and location_loss() read."""
    n = len(shape)
    return C.Batch(images=np.zeros((n, 1, 1, 3), np.uint8), shape=np.array(shape), colour=np.array(colour),
                   cell=np.array(cell), x=np.zeros(n), y=np.zeros(n))


def test_positives_count_true_captions_and_never_identical_ones_as_negatives():
    batch = _batch(["circle", "circle", ""], ["red", "black", ""], [6, 4, -1])
    uniq = [("circle", "", -1), ("circle", "red", 6), ("circle", "black", -1), ("", "", -1), ("square", "", -1)]
    want = np.array([[1, 1, 0, 0, 0], [1, 0, 1, 0, 0], [0, 0, 0, 1, 0]], bool)
    assert np.array_equal(C.positives(batch, uniq), want)
    assert C.caption("circle", "red", 6) == "a red circle in the lower left"
    # cells are row-major with row 0 at the top (y grows downwards): planted centres
    x, y = np.array([10.0, 200.0, 112.0, 10.0]), np.array([10.0, 10.0, 112.0, 220.0])
    assert C.cell_of(x, y).tolist() == [0, 2, 4, 6]
    assert [C.LOCATIONS[k] for k in C.cell_of(x, y)] == ["upper left", "upper right", "centre", "lower left"]


def test_contrastive_loss_matches_a_direct_computation_and_duplicates_are_not_negatives():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, generator=g)
    pos = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 1, 1], [0, 0, 1]], dtype=torch.bool)
    li = np.mean([-np.mean([torch.log_softmax(logits[i], 0)[j] for j in np.flatnonzero(pos[i])]) for i in range(4)])
    lt = np.mean([-np.mean([torch.log_softmax(logits[:, j], 0)[i] for i in np.flatnonzero(pos[:, j])]) for j in range(3)])
    assert float(C.contrastive_loss(logits, pos)) == pytest.approx((li + lt) / 2, rel=1e-6)
    # a caption true of no image (a hard negative) enters only the image->text direction
    extra = torch.cat([logits, torch.randn(4, 1, generator=g)], 1)
    pos_extra = torch.cat([pos, torch.zeros(4, 1, dtype=torch.bool)], 1)
    li2 = np.mean([-np.mean([torch.log_softmax(extra[i], 0)[j] for j in np.flatnonzero(pos[i])]) for i in range(4)])
    assert float(C.contrastive_loss(extra, pos_extra)) == pytest.approx((li2 + lt) / 2, rel=1e-6)
    # two images with the same caption, both matched perfectly: the loss goes to 0
    big = torch.tensor([[50.0, -50.0], [50.0, -50.0], [-50.0, 50.0]])
    dup = torch.tensor([[1, 0], [1, 0], [0, 1]], dtype=torch.bool)
    # only the entropy of the uniform target over caption 0's two images remains: (0 + log(2) / 2) / 2
    assert float(C.contrastive_loss(big, dup)) == pytest.approx(np.log(2) / 4, abs=1e-6)


def test_location_loss_separates_only_the_nine_cells_of_the_image_shape():
    vocab = C.vocabulary("spatial")
    batch = _batch(["square", "circle", ""], ["red", "black", ""], [2, 7, -1])
    flat = torch.zeros(3, len(vocab))
    assert float(C.location_loss(flat, batch, vocab)) == pytest.approx(np.log(9), rel=1e-6)
    # a large logit on the true "a <shape> in the <cell>" caption drives it to 0 ...
    sure = flat.clone()
    sure[0, vocab.index(("square", "", 2))] = 50.0
    sure[1, vocab.index(("circle", "", 7))] = 50.0
    assert float(C.location_loss(sure, batch, vocab)) < 1e-6
    # ... and logits of other shapes, colours or the empty image do not enter it
    other = flat.clone()
    other[0, vocab.index(("circle", "", 2))] = other[0, vocab.index(("square", "red", 2))] = 50.0
    other[:, vocab.index(("", "", -1))] = 50.0
    assert float(C.location_loss(other, batch, vocab)) == pytest.approx(np.log(9), rel=1e-6)
    # the nonspatial vocabulary names no cell: no location term
    assert float(C.location_loss(torch.zeros(3, 16), batch, C.vocabulary("nonspatial"))) == 0.0


@pytest.mark.parametrize("variant", C.VARIANTS)
def test_shape_loss_separates_only_the_three_shape_only_captions(variant):
    vocab = C.vocabulary(variant)
    batch = _batch(["square", "circle", ""], ["red", "black", ""], [2, 7, -1])
    flat = torch.zeros(3, len(vocab))
    assert float(C.shape_loss(flat, batch, vocab)) == pytest.approx(np.log(3), rel=1e-6)
    sure = flat.clone()
    sure[0, vocab.index(("square", "", -1))] = sure[1, vocab.index(("circle", "", -1))] = 50.0
    assert float(C.shape_loss(sure, batch, vocab)) < 1e-6
    # the wrong shape-only caption raises it; coloured captions and the empty image do not enter
    wrong = flat.clone()
    wrong[0, vocab.index(("triangle", "", -1))] = 50.0
    assert float(C.shape_loss(wrong, batch, vocab)) == pytest.approx((50.0 + np.log(3)) / 2, rel=1e-4)
    other = flat.clone()
    other[0, vocab.index(("circle", "red", -1))] = 50.0
    other[:, vocab.index(("", "", -1))] = 50.0
    assert float(C.shape_loss(other, batch, vocab)) == pytest.approx(np.log(3), rel=1e-6)
    assert float(C.shape_loss(flat[2:], _batch([""], [""], [-1]), vocab)) == 0.0


def test_pos_scale_multiplies_only_the_visual_positional_embedding():
    a, b = C.build_model(5).state_dict(), C.build_model(5, pos_scale=30.0).state_dict()
    k = "visual.positional_embedding"
    assert torch.allclose(b[k], 30.0 * a[k])
    assert all(torch.equal(a[n], b[n]) for n in a if n != k)


@pytest.mark.parametrize("weights", sorted(C.WEIGHTS))
def test_committed_weights_load_through_load_model_and_reproduce_the_card(weights):
    path = C.WEIGHTS[weights]
    assert path.stat().st_size <= 40e6
    lm = models.load_model(C.CONTROL_MODEL, weights, device="cpu", dtype="float32")
    assert lm.name == C.CONTROL_MODEL and not lm.quick_gelu
    doc = json.loads(path.with_suffix(".json").read_text())
    got = C.evaluate(lm.model, lm.tokenizer, n=C.N_SMALL)
    assert got == pytest.approx(doc["metrics"]["small"], abs=1e-9)
    assert got["circle_vs_empty"] >= 0.95
    card = path.with_suffix(".md").read_text()
    assert f"{doc['metrics']['heldout']['circle_vs_empty']:.3f}" in card
    assert (path.parent / f"{weights}_loss.png").is_file()


def test_control_weights_imply_their_model_and_refuse_another():
    assert models.model_for_weights("control-spatial") == C.CONTROL_MODEL
    assert models.model_for_weights("random") is None and models.model_for_weights("openai") is None
    with pytest.raises(ValueError, match="model"):
        models.load_model("ViT-B-32", "control-spatial", device="cpu")
    with pytest.raises(ValueError, match="model"):
        models.check_weights_available("ViT-B-32", "control-nonspatial")
    from helpers.study import load_params, with_implied_model

    # an override of the weights carries its model past the preset's model: ViT-B-32
    assert load_params("params/blog.yaml", {"weights": "control-spatial"})["model"] == C.CONTROL_MODEL
    assert load_params("params/blog.yaml", {"weights": "control-spatial", "model": "ViT-B-32"})["model"] == "ViT-B-32"
    assert load_params("params/blog.yaml", {"weights": "random"})["model"] == "ViT-B-32"

    assert with_implied_model({"weights": "control-spatial"})["model"] == C.CONTROL_MODEL
    assert with_implied_model({"weights": "control-spatial", "model": "ViT-B-32"})["model"] == "ViT-B-32"
    assert "model" not in with_implied_model({"weights": "random"})
    # the random control of a control study is the control architecture, seeded
    r = models.load_model(C.CONTROL_MODEL, "random", seed=1, device="cpu", dtype="float32")
    assert r.model.visual.conv1.weight.shape == C.build_model(0).visual.conv1.weight.shape
    assert C.CONTROL_MODEL in models.available_models()


def test_a_study_stage_on_a_control_model_sees_the_circle_and_conv1_lesion_removes_it():
    """Layer-lesion stage (helpers.lesions) on the committed spatial control: only what training guarantees."""
    from helpers import lesions as L

    lm = models.load_model(C.CONTROL_MODEL, "control-spatial", device="cpu", dtype="float32")
    stim = stimuli.make_stimuli(32, seed=11)  # the study's design: black circles, 20-80 px, anywhere

    def batches():
        return stimuli.iter_batches(stim, lm.preprocess, 16)

    cache = L.build_residual_cache(L.visual_tower(lm.model), batches(), len(stim), progress=False)
    blank = stimuli.blank_input(stim, lm.preprocess)
    row = L.layer_lesion_study(lm, cache, batches, control_images=blank, units=["visual.conv1"], progress=False).iloc[0]
    assert row.baseline_performance >= 0.95 and row.baseline_balanced_performance >= 0.95
    assert row.performance in (0.0, 1.0)  # every stimulus now gets the same decision
    # ... and the blank gets it too: the balanced performance collapses to chance, whatever the circle-only one says
    assert row.balanced_performance == 0.5
    # the image content is gone: circles and empty images share one embedding, so circle-vs-empty is at chance
    images = np.concatenate([np.stack([stimuli.render(stim, i) for i in range(8)]), np.full((8, 224, 224, 3), 255, np.uint8)])
    with torch.no_grad():
        before = lm.model.encode_image(C.to_input(images), normalize=True)
        with L.lesion(lm.model, "visual.conv1"):
            after = lm.model.encode_image(C.to_input(images), normalize=True)
    assert not torch.allclose(before, before[:1].expand_as(before), atol=1e-3)
    assert torch.allclose(after, after[:1].expand_as(after), atol=1e-5)
    task = L.zero_shot_task(lm)  # "a black circle" vs "an empty image"
    truth = np.r_[np.ones(8, bool), np.zeros(8, bool)]  # circle?
    for feats, lo, hi in ((before, 0.95, 1.0), (after, 0.5, 0.5)):
        said_circle, _ = task.decide(feats)
        balanced = ((said_circle == truth)[truth].mean() + (said_circle == truth)[~truth].mean()) / 2
        assert lo <= balanced <= hi
