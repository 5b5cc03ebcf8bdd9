"""Tests of the Record stage (helpers.record): hooks, token layout, storage, resume.

One seeded random-init ViT-B/32 (session fixture ``vit_random``) is shared; stimulus
sets are tiny (4-60 images) so the module runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import dataclasses
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import hooks
from helpers import record as R
from helpers.models import weights_hash
from helpers.names import hook_name
from helpers.stimuli import iter_batches, make_stimuli

BLOCKS = "visual.transformer.resblocks.*"
MEM_LAYERS = [BLOCKS, BLOCKS + ".attn", BLOCKS + ".mlp"]  # 36 layers x all 50 tokens


@pytest.fixture(scope="module")
def lm(vit_random):
    return vit_random


@pytest.fixture(scope="module")
def whash(lm):
    return weights_hash(lm.model)


@pytest.fixture(scope="module")
def stim16():
    return make_stimuli(16, seed=3)


@pytest.fixture(scope="module")
def images4(lm):
    stim = make_stimuli(4, seed=5)
    imgs, _ = next(iter_batches(stim, lm.preprocess, 4))
    return stim, imgs


@pytest.fixture(scope="module")
def manual(lm, images4):
    """Reference residual stream: ln_pre output and every block output, by a hand-written forward."""
    _, imgs = images4
    v = lm.model.visual
    assert v.transformer.batch_first  # this open_clip runs blocks batch-first; layout is asserted below too
    with torch.no_grad():
        x = v._embeds(imgs)
        resid = [x]
        for blk in v.transformer.resblocks:
            x = blk(x)
            resid.append(x)
    return resid  # resid[0] = input of block 0, resid[L + 1] = output of block L


@pytest.fixture(scope="module")
def ref16(lm, stim16, whash, tmp_path_factory):
    """Default recording (12 attn layers, CLS) of 16 stimuli in one batch of 16."""
    d = tmp_path_factory.mktemp("ref16")
    R.record(lm, stim16, d, batch_size=16, progress=False, weights_hash=whash)
    return d


def _hooks_left(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ----------------------------------------------------------------------------- layer names


def test_resolve_layers_default_globs_and_natural_order(lm):
    names = R.resolve_layers(lm)
    assert names == [f"visual.transformer.resblocks.{i}.attn" for i in range(12)]  # 2 before 10
    blocks = R.resolve_layers(lm, BLOCKS)
    assert blocks == [f"visual.transformer.resblocks.{i}" for i in range(12)]  # '*' does not cross dots
    mixed = R.resolve_layers(lm, ["visual.transformer.resblocks.1?.mlp", "visual.conv1", "visual.conv1"])
    assert mixed == ["visual.conv1", "visual.transformer.resblocks.10.mlp", "visual.transformer.resblocks.11.mlp"]
    assert "visual.transformer.resblocks.3.attn" in R.resolve_layers(lm, "visual.**.attn")
    assert hook_name("visual.transformer.resblocks.3.attn") == "image.blocks.3.hook_attn_out"
    assert hook_name("transformer.resblocks.0") == "text.blocks.0.hook_resid_post"


@pytest.mark.parametrize(
    "bad, needle",
    [
        ("visual.transformer.resblock.*.attn", "matches no module"),
        ("visual.trnsformer", "visual.transformer"),  # close match offered
        ("visual.transformer.resblocks.0.attn.out_proj", "never fire"),
        ("visual.transformer.resblocks", "container"),
        ([], "layers must be"),
    ],
)
def test_resolve_layers_refuses_clearly(lm, bad, needle):
    with pytest.raises(ValueError, match="layers") as e:
        R.resolve_layers(lm, bad)
    assert needle in str(e.value)


# ----------------------------------------------------------------------------- correctness


def test_block_outputs_equal_manual_forward_and_forward_intermediates(lm, images4, manual):
    stim, imgs = images4
    acts, emb = R.record_arrays(lm, stim, layers=BLOCKS, tokens="all", batch_size=4)
    fi = lm.model.visual.forward_intermediates(
        imgs, output_fmt="NLC", output_extra_tokens=True, intermediates_only=True
    )
    for i in range(12):
        got = acts[f"visual.transformer.resblocks.{i}"]
        assert got.shape == (4, 50, 768)
        want = manual[i + 1].numpy()
        assert np.abs(got - want).max() <= 1e-5
        oc = torch.cat([fi["image_intermediates_prefix"][i], fi["image_intermediates"][i]], dim=1).detach().numpy()
        assert np.abs(got - oc).max() <= 1e-5
    with torch.no_grad():
        ref_emb = lm.model.encode_image(imgs, normalize=True).numpy()
    assert np.abs(emb - ref_emb).max() <= 1e-5


def test_attention_and_mlp_outputs_sum_to_block_output(lm, images4, manual):
    """attn records element 0 of MultiheadAttention's (output, weights): resid_post = resid_pre + attn + mlp."""
    stim, _ = images4
    acts, _ = R.record_arrays(
        lm, stim, layers=["visual.transformer.resblocks.*.attn", "visual.transformer.resblocks.*.mlp"],
        tokens="all", indices=[0, 1], batch_size=2,
    )
    for i in (0, 5, 11):
        pre, post = manual[i][:2].numpy(), manual[i + 1][:2].numpy()
        a, m = acts[f"visual.transformer.resblocks.{i}.attn"], acts[f"visual.transformer.resblocks.{i}.mlp"]
        assert np.abs(pre + a + m - post).max() <= 1e-4


def test_cls_is_the_class_token_not_a_patch(lm, images4, manual):
    stim, _ = images4
    acts, _ = R.record_arrays(lm, stim, layers=BLOCKS, tokens="cls", indices=[0, 1, 2], batch_size=2)
    for i in (0, 6, 11):
        got = acts[f"visual.transformer.resblocks.{i}"]
        assert got.shape == (3, 768)
        assert np.abs(got - manual[i + 1][:3, 0].numpy()).max() <= 1e-5
        assert np.abs(got - manual[i + 1][:3, 1].numpy()).max() > 1e-2  # a patch token would differ
        # and not the batch axis confused with the token axis (seq-first reading of a batch-first tensor)
        assert np.abs(got[0] - manual[i + 1][0, 0].numpy()).max() <= 1e-5


def test_token_selections_patches_all_mean_and_conv1(lm, images4, manual):
    stim, imgs = images4
    L = "visual.transformer.resblocks.4"
    ref = manual[5][:2].numpy()
    for tokens, want in [("patches", ref[:, 1:]), ("all", ref), ("mean", ref[:, 1:].mean(1))]:
        acts, _ = R.record_arrays(lm, stim, layers=L, tokens=tokens, indices=[0, 1], batch_size=2)
        assert acts[L].shape == want.shape
        assert np.abs(acts[L] - want).max() <= 1e-5, tokens
    table = R.patch_table(lm)
    assert len(table) == 49 and list(table.columns[:4]) == ["patch", "token", "row", "col"]
    r = table.iloc[9]  # patch 9 = row 1, col 2 of the 7x7 grid
    assert (r.row, r.col, r.token, r.x0, r.x1, r.y0, r.y1) == (1, 2, 10, 64, 96, 32, 64)
    # conv1 (B x 768 x 7 x 7): patches are the grid positions in the same row-major order; no class token
    with torch.no_grad():
        conv = lm.model.visual.conv1(imgs[:2]).numpy()
    acts, _ = R.record_arrays(lm, stim, layers="visual.conv1", tokens="patches", indices=[0, 1], batch_size=2)
    assert acts["visual.conv1"].shape == (2, 49, 768)
    assert np.abs(acts["visual.conv1"][:, 9] - conv[:, :, 1, 2]).max() <= 1e-5
    acts, _ = R.record_arrays(lm, stim, layers="visual.conv1", tokens="mean", indices=[0, 1], batch_size=2)
    assert np.abs(acts["visual.conv1"] - conv.mean((2, 3))).max() <= 1e-5
    with pytest.raises(ValueError, match="class token"):
        R.Capture(lm, "visual.conv1", tokens="cls")
    with pytest.raises(ValueError, match="tokens"):
        R.Capture(lm, "visual.conv1", tokens="CLS")


def test_text_tower_capture_eot(lm):
    prompts = ["a black circle", "an empty image"]
    acts, emb = R.record_text(lm, prompts, layers=["transformer.resblocks.*", "ln_final"], tokens="eot")
    assert acts["transformer.resblocks.11"].shape == (2, 512)
    with torch.no_grad():
        raw = lm.model.encode_text(lm.tokenizer(prompts)).numpy()
    proj = acts["ln_final"] @ lm.model.text_projection.detach().numpy()
    assert np.abs(proj - raw).max() <= 1e-4  # the EOT row of ln_final is what CLIP pools
    with pytest.raises(ValueError, match="eot"):
        R.Capture(lm, "transformer.resblocks.0", tokens="cls")
    with pytest.raises(ValueError, match="text-tower"):
        R.record(lm, make_stimuli(2), "/nonexistent/never", layers="transformer.resblocks.0")


# ----------------------------------------------------------------------------- layout assertions


def test_layout_is_asserted_not_assumed(lm):
    lay = R.module_layout(lm, "visual.transformer.resblocks.0.attn")
    inp = R.TowerInput(batch=2, n_tokens=50, n_prefix=1, grid=(7, 7))
    x = torch.randn(50, 2, 8)  # a sequence-first tensor: batch-first is the only supported layout
    with pytest.raises(R.LayoutError):
        R.select_tokens(x, lay, "cls", inp)
    assert torch.equal(R.select_tokens(x.transpose(0, 1), lay, "cls", inp), x[0])
    # A model that runs its transformer sequence-first is refused before any hook is registered.
    t = lm.model.visual.transformer
    t.batch_first = False
    try:
        with pytest.raises(hooks.SequenceFirstError):
            R.Capture(lm, "visual.transformer.resblocks.0")
        assert _hooks_left(lm.model) == 0
    finally:
        t.batch_first = True


def test_hooks_removed_on_error_and_model_unchanged(lm, images4, whash):
    _, imgs = images4
    assert _hooks_left(lm.model) == 0
    with pytest.raises(KeyError):
        with R.Capture(lm, [BLOCKS, "visual.ln_pre"], tokens="cls") as cap:
            assert _hooks_left(lm.model) == 14  # 13 output hooks + the image-tower input hook
            with torch.no_grad():
                lm.model.encode_image(imgs[:1])
            assert cap.outputs["visual.transformer.resblocks.0"].shape == (1, 768)
            raise KeyError("boom")
    assert _hooks_left(lm.model) == 0
    assert not lm.model.training
    assert weights_hash(lm.model) == whash
    # an error raised inside a hook (wrong layout) also leaves no hooks behind
    with pytest.raises(RuntimeError):
        with R.Capture(lm, "visual.conv1", tokens="patches"):
            with torch.no_grad():
                lm.model.visual.transformer(torch.zeros(1, 50, 768))  # tower input never seen
                lm.model.visual.conv1(imgs[:1])
    assert _hooks_left(lm.model) == 0


# ----------------------------------------------------------------------------- storage


def test_recording_on_disk_manifest_and_loader(lm, stim16, ref16, whash):
    man, arrays, emb = R.load_recording(ref16)
    assert man["complete"] and man["format"] == R.FORMAT
    assert man["stimuli_hash"] == stim16.hash and man["weights_hash"] == whash
    assert man["layers"] == list(arrays) == R.resolve_layers(lm)
    assert man["tokens"] == "cls" and man["storage_dtype"] == "float32" and man["compute_dtype"] == "float32"
    assert set(man["versions"]) >= {"torch", "open_clip", "numpy", "python"}
    assert man["progress"]["n_done"] == 16
    for name, a in arrays.items():
        assert isinstance(a, np.memmap) and a.shape == (16, 768) and a.dtype == np.float32
        assert (ref16 / f"{name}.npy").is_file()
    assert emb.shape == (16, 512) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    json.loads((ref16 / "manifest.json").read_text())  # plain JSON
    summary = R.recording_summary  # smoke: works on a run-folder layout elsewhere
    assert callable(summary)


def test_batch_size_1_equals_batch_size_16(lm, stim16, ref16, whash, tmp_path):
    R.record(lm, stim16, tmp_path / "b1", batch_size=1, progress=False, weights_hash=whash)
    _, a1, e1 = R.load_recording(tmp_path / "b1")
    _, a16, e16 = R.load_recording(ref16)
    for k in a1:
        assert np.abs(a1[k] - a16[k]).max() <= 1e-4 * max(1.0, np.abs(a16[k]).max())
    assert np.abs(e1 - e16).max() <= 1e-5


class _Interrupt(Exception):
    pass


def test_interrupted_recording_resumes_identically(lm, whash, tmp_path):
    stim = make_stimuli(9, seed=6)
    R.record(lm, stim, tmp_path / "ref", batch_size=3, progress=False, weights_hash=whash)
    d = tmp_path / "rec"

    def stop_after_one(info):
        if info["batch"] == 0:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        R.record(lm, stim, d, batch_size=3, progress=False, weights_hash=whash, on_batch=stop_after_one)
    man = R.read_manifest(d)
    assert not man["complete"] and man["progress"]["n_done"] == 3
    with pytest.raises(R.IncompleteRecordingError):
        R.load_recording(d)
    part = R.load_recording(d, allow_incomplete=True)
    assert part.embeddings.shape[0] == 3
    assert _hooks_left(lm.model) == 0

    seen = []
    R.record(lm, stim, d, batch_size=3, progress=False, weights_hash=whash, on_batch=seen.append)
    assert [s["n_done"] for s in seen] == [6, 9]  # only the remaining stimuli were run
    _, got, emb = R.load_recording(d)
    _, want, emb_ref = R.load_recording(tmp_path / "ref")
    for k in want:
        assert np.array_equal(got[k], want[k])
    assert np.array_equal(emb, emb_ref)
    assert len(R.read_manifest(d)["progress"]["sessions"]) == 2


def test_mismatched_recording_is_refused(lm, stim16, ref16, whash, tmp_path):
    other = make_stimuli(16, seed=4)
    with pytest.raises(R.RecordingMismatchError, match="stimuli_hash"):
        R.record(lm, other, ref16, progress=False, weights_hash=whash)
    with pytest.raises(R.RecordingMismatchError, match="weights_hash"):
        R.record(lm, stim16, ref16, progress=False, weights_hash="0" * 16)
    seeded = dataclasses.replace(lm, seed=7)
    with pytest.raises(R.RecordingMismatchError, match="seed"):
        R.record(seeded, stim16, ref16, progress=False, weights_hash=whash)
    with pytest.raises(R.RecordingMismatchError, match="tokens"):
        R.record(lm, stim16, ref16, tokens="mean", progress=False, weights_hash=whash)
    with pytest.raises(R.RecordingMismatchError, match="layers"):
        R.record(lm, stim16, ref16, layers=BLOCKS, progress=False, weights_hash=whash)
    # a matching complete recording is returned without running the model
    calls = []
    man = R.record(lm, stim16, ref16, progress=False, weights_hash=whash, on_batch=calls.append)
    assert man["complete"] and calls == []
    # overwrite=True starts fresh (in a copy of the folder)
    d = tmp_path / "copy"
    d.mkdir()
    for f in ref16.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    small = make_stimuli(4, seed=9)
    man = R.record(lm, small, d, tokens="mean", storage_dtype="float16", overwrite=True, progress=False,
                   weights_hash=whash)
    loaded = R.load_recording(d)
    assert man["stimuli_hash"] == small.hash and loaded.embeddings.shape == (4, 512)
    assert all(a.dtype == np.float16 and a.shape == (4, 768) for a in loaded.arrays.values())
    ref, _ = R.record_arrays(lm, small, tokens="mean", batch_size=4)
    for k, a in loaded.arrays.items():
        assert np.abs(a.astype(np.float32) - ref[k]).max() <= 2e-3 * max(1.0, np.abs(ref[k]).max())


def _copy_folder(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize("mode", ["w", "w+", "r+", "readwrite"])
def test_load_recording_never_opens_files_for_writing(ref16, tmp_path, mode):
    d = _copy_folder(ref16, tmp_path / "copy")
    before = {f.name: f.read_bytes() for f in d.iterdir()}
    with pytest.raises(ValueError, match="mmap_mode"):
        R.load_recording(d, mmap_mode=mode)
    assert {f.name: f.read_bytes() for f in d.iterdir()} == before
    man, arrays, _ = R.load_recording(d, mmap_mode="c")  # copy-on-write: writes stay in memory
    first = next(iter(arrays.values()))
    first[:] = 0
    assert {f.name: f.read_bytes() for f in d.iterdir()} == before


def test_corrupt_manifest_and_array_are_named_and_overwrite_rebuilds(lm, stim16, ref16, whash, tmp_path):
    d = _copy_folder(ref16, tmp_path / "copy")
    m = d / R.MANIFEST
    m.write_bytes(m.read_bytes()[: m.stat().st_size // 2])  # truncated mid-file
    for call in (lambda: R.load_recording(d), lambda: R.record(lm, stim16, d, progress=False, weights_hash=whash)):
        with pytest.raises(R.CorruptRecordingError, match=str(m)):
            call()
    m.write_bytes(b"\xff\xfe" + b"\x00" * 40)  # not even UTF-8
    with pytest.raises(R.CorruptRecordingError):
        R.load_recording(d)
    man = R.record(lm, stim16, d, overwrite=True, progress=False, weights_hash=whash)  # --force rebuilds
    assert man["complete"]
    _, got, _ = R.load_recording(d)
    _, want, _ = R.load_recording(ref16)
    assert all(np.array_equal(got[k], want[k]) for k in want)
    npy = d / next(iter(R.read_manifest(d)["arrays"].values()))["file"]
    npy.write_bytes(b"\x93NUMPY junk that is no array header")
    with pytest.raises(R.CorruptRecordingError, match=npy.name):
        R.load_recording(d)


def test_conditions_seeds():
    specs = R.condition_specs("random", seed=0, random_seed=1)
    assert specs == {"model": {"weights": "random", "seed": 0}, "random": {"weights": "random", "seed": 1}}
    assert list(R.condition_specs("openai", include_random=False)) == ["model"]
    with pytest.raises(ValueError, match="random_seed"):
        R.condition_specs("random", seed=2, random_seed=2)


# ----------------------------------------------------------------------------- memory


def _anon_rss_mb() -> float:
    """Live anonymous resident memory (heap, torch buffers) in MiB; excludes file-backed memmap pages.

    ``malloc_trim(0)`` first hands freed heap pages back to the OS, so the figure tracks live
    allocations rather than glibc's high-water mark (without it, samples swing by tens of MiB).
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no RssAnon in /proc/self/status")


def _load_libc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _load_libc()


def _peak_growth(lm, n, d, whash) -> tuple[float, float]:
    """Peak anonymous-RSS growth and peak traced (numpy/Python) allocation while recording n stimuli."""
    stim = make_stimuli(n, seed=11)
    base = _anon_rss_mb()
    peak = [base]
    tracemalloc.start()
    try:
        R.record(lm, stim, d, layers=MEM_LAYERS, tokens="all", batch_size=2, progress=False, weights_hash=whash,
                 on_batch=lambda info: peak.append(_anon_rss_mb()))
        traced = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    return max(peak) - base, traced


@pytest.mark.skipif(not Path("/proc/self/status").exists() or _LIBC is None, reason="needs Linux /proc and glibc")
def test_memory_does_not_grow_with_number_of_stimuli(lm, whash, tmp_path, monkeypatch):
    per_stim_mb = 36 * 50 * 768 * 4 / 2**20  # 5.3 MiB of activations per stimulus
    _peak_growth(lm, 2, tmp_path / "warm", whash)  # warm allocator caches
    small, tr_small = _peak_growth(lm, 2, tmp_path / "small", whash)
    big, tr_big = _peak_growth(lm, 20, tmp_path / "big", whash)
    accumulated = 18 * per_stim_mb  # what holding the 18 extra stimuli would cost (~95 MiB)
    assert big - small < accumulated / 3, (small, big)
    assert tr_big - tr_small < accumulated / 3, (tr_small, tr_big)

    # The same measurement catches a recorder that keeps its activations (power of the test).
    kept = []
    real = R._to_storage
    monkeypatch.setattr(R, "_to_storage", lambda t, dt, name: kept.append(real(t, dt, name).copy()) or kept[-1])
    leaky, _ = _peak_growth(lm, 20, tmp_path / "leaky", whash)
    assert leaky - small > accumulated / 2, (small, leaky)


# ----------------------------------------------------------------------------- bf16 and summaries


def test_bf16_agreement_and_summaries(lm, stim16, ref16, tmp_path):
    import copy

    bf = dataclasses.replace(lm, model=copy.deepcopy(lm.model).to(torch.bfloat16), dtype=torch.bfloat16)
    stim = make_stimuli(4, seed=5)
    a32, e32 = R.record_arrays(lm, stim, batch_size=4)
    a16, e16 = R.record_arrays(bf, stim, batch_size=4)
    assert all(v.dtype == np.float32 for v in a16.values())  # converted on the way out
    df = R.agreement(a32, a16, e32, e16)
    emb_row = df[df.layer == "embedding"].iloc[0]
    assert emb_row.cosine_min > 0.99
    assert (df.pearson_r > 0.98).all()
    same = R.agreement(a32, a32, e32, e32)
    assert np.allclose(same.pearson_r, 1.0) and np.isclose(same.cosine_min.iloc[-1], 1.0)

    rec = R.load_recording(ref16)
    stats = R.activation_stats({"model": rec, "random": rec.arrays})
    assert len(stats) == 24 and {"q1", "q50", "q99"} <= set(stats.columns)
    assert (stats.q1 <= stats.q50).all() and (stats.q50 <= stats.q99).all()
    from helpers import plots

    plots.plot_activation_distributions(stats, path=tmp_path / "dist.png")
    assert (tmp_path / "dist.png").stat().st_size > 1000
