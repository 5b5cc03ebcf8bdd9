import numpy as np
import pytest

from helpers import stimuli


def test_geometry_diameters_in_range_and_quadrants_filled():
    s = stimuli.make_stimuli(400, seed=3, diameter=(20, 80))
    assert len(s) == 400
    assert s.diameter.min() >= 20 and s.diameter.max() <= 80
    # uniform over the canvas: every quadrant gets roughly a quarter
    q = (s.x >= 112).astype(int) + 2 * (s.y >= 112).astype(int)
    counts = np.bincount(q, minlength=4)
    assert counts.min() > 60, counts
    assert s.x.min() < 20 and s.x.max() > 204 and s.y.min() < 20 and s.y.max() > 204


def test_inside_keeps_shapes_on_canvas():
    s = stimuli.make_stimuli(300, seed=1, inside=True)
    r = s.diameter / 2
    assert np.all(s.x - r >= 0) and np.all(s.x + r <= 224)
    assert np.all(s.y - r >= 0) and np.all(s.y + r <= 224)


def test_determinism_same_seed_same_pixels_and_hash():
    a = stimuli.make_stimuli(20, seed=7)
    b = stimuli.make_stimuli(20, seed=7)
    c = stimuli.make_stimuli(20, seed=8)
    assert a.hash == b.hash
    assert a.hash != c.hash
    for i in range(len(a)):
        assert np.array_equal(stimuli.render(a, i), stimuli.render(b, i))
    assert not np.array_equal(stimuli.render(a, 0), stimuli.render(c, 0))


def test_parameters_enter_the_hash():
    base = stimuli.make_stimuli(10, seed=0)
    assert stimuli.make_stimuli(10, seed=0, inside=True).hash != base.hash
    assert stimuli.make_stimuli(10, seed=0, background="grey").hash != base.hash


def test_render_circle_pixels():
    s = stimuli.make_stimuli(1, seed=0, diameter=(40, 40), inside=True)
    img = stimuli.render(s, 0)
    assert img.shape == (224, 224, 3) and img.dtype == np.uint8
    black = (img == 0).all(axis=2)
    # area of a 40 px disc on the pixel-centre lattice: pi r^2 within 2 %
    assert abs(black.sum() - np.pi * 20**2) / (np.pi * 20**2) < 0.02
    ys, xs = np.nonzero(black)
    assert abs(xs.mean() + 0.5 - s.x[0]) < 0.5 and abs(ys.mean() + 0.5 - s.y[0]) < 0.5
    # everything else is white background
    assert (img[~black] == 255).all()


@pytest.mark.parametrize("shape", stimuli.SHAPES)
def test_every_shape_renders_and_is_centred(shape):
    s = stimuli.make_stimuli(1, seed=2, diameter=(60, 60), shapes=[shape], inside=True)
    m = (stimuli.render(s, 0) == 0).all(axis=2)
    assert m.sum() > 300
    ys, xs = np.nonzero(m)
    assert abs(xs.mean() + 0.5 - s.x[0]) < 1.0


def test_manifest_roundtrip_and_tamper_detection(tmp_path):
    s = stimuli.make_stimuli(30, seed=5, shapes=["circle", "square"], colours=["black", "red"])
    p = stimuli.save_manifest(s, tmp_path / "stimuli.json")
    t = stimuli.load_manifest(p)
    assert t.hash == s.hash
    assert np.array_equal(t.x, s.x) and np.array_equal(t.diameter, s.diameter)
    assert list(t.shape) == list(s.shape)
    assert np.array_equal(stimuli.render(t, 3), stimuli.render(s, 3))
    p.write_text(p.read_text().replace(repr(float(s.x[0])), repr(float(s.x[0]) + 1.0), 1))
    with pytest.raises(ValueError, match="hash"):
        stimuli.load_manifest(p)


def test_missing_manifest_names_the_notebook(tmp_path):
    with pytest.raises(FileNotFoundError, match="01_design"):
        stimuli.load_manifest(tmp_path / "nope.json")


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"n": 0}, "n "),
        ({"n": -5}, "n "),
        ({"diameter": (0, 10)}, "diameter"),
        ({"diameter": (50, 20)}, "diameter"),
        ({"diameter": (20, 300)}, "diameter"),
        ({"shapes": ["hexagon"]}, "shapes"),
        ({"colours": ["mauve"]}, "colours"),
        ({"canvas": 0}, "canvas"),
    ],
)
def test_bad_input_raises_naming_the_parameter(kwargs, word):
    args = {"n": 10, **kwargs}
    with pytest.raises(ValueError, match=word):
        stimuli.make_stimuli(**args)


def test_positions_map_through_resize_when_canvas_differs():
    from torchvision import transforms as T

    pre = T.Compose([T.Resize(224), T.CenterCrop(224), T.ToTensor()])
    s = stimuli.make_stimuli(5, seed=0, canvas=448)
    pos = stimuli.positions_in_input(s, pre)
    assert np.allclose(pos, s.positions / 2)
    # crop: resize to 256 then crop 224 removes 16 px each side
    pre2 = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])
    s2 = stimuli.make_stimuli(5, seed=0, canvas=256)
    assert np.allclose(stimuli.positions_in_input(s2, pre2), s2.positions - 16)
    with pytest.raises(ValueError, match="Resize"):
        stimuli.positions_in_input(s, T.Compose([T.ToTensor()]))


def test_dataset_yields_preprocessed_tensors_in_order(vit_random):
    s = stimuli.make_stimuli(10, seed=0)
    batches = list(stimuli.iter_batches(s, vit_random.preprocess, batch_size=4))
    assert [len(i) for _, i in batches] == [4, 4, 2]
    assert np.array_equal(np.concatenate([i for _, i in batches]), np.arange(10))
    x, _ = batches[0]
    assert tuple(x.shape) == (4, 3, 224, 224)
    # preprocessing is open_clip's: white maps to (1 - mean) / std
    ds = stimuli.StimulusDataset(s, vit_random.preprocess)
    t, i = ds[0]
    assert i == 0
    white = (1 - np.array([0.48145466, 0.4578275, 0.40821073])) / np.array([0.26862954, 0.26130258, 0.27577711])
    corner = t[:, 0, 0].numpy() if stimuli.render(s, 0)[0, 0, 0] == 255 else t[:, -1, -1].numpy()
    assert np.allclose(corner, white, atol=1e-3)
    with pytest.raises(ValueError, match="batch_size"):
        next(stimuli.iter_batches(s, vit_random.preprocess, batch_size=0))


def test_check_batch_size_names_the_parameter():
    from helpers.stimuli import check_batch_size

    assert check_batch_size(np.int64(3)) == 3 and type(check_batch_size(np.int64(3))) is int
    for bad in (0, -1, True, 2.0, "8"):
        with pytest.raises(ValueError, match="batch_size"):
            check_batch_size(bad)
