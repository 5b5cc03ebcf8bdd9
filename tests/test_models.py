import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from helpers import models, ratemaps, stimuli


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_random_weights_are_seeded(vit_random):
    again = models.load_model("ViT-B-32", "random", device="cpu", dtype="float32", seed=0)
    other = models.load_model("ViT-B-32", "random", device="cpu", dtype="float32", seed=1)
    assert _state_equal(vit_random.model, again.model)
    assert not _state_equal(vit_random.model, other.model)
    assert models.weights_hash(vit_random.model) == models.weights_hash(again.model)
    assert models.weights_hash(vit_random.model) != models.weights_hash(other.model)


def test_openai_architecture_uses_quickgelu(vit_random):
    # the random control copies the openai tag's architecture: QuickGELU MLPs
    assert vit_random.quick_gelu
    act = vit_random.model.visual.transformer.resblocks[0].mlp.gelu
    x = torch.linspace(-3, 3, 7)
    assert torch.allclose(act(x), x * torch.sigmoid(1.702 * x))
    plain = models.load_model("ViT-B-32", "random", device="cpu", seed=0, dtype="float32", quick_gelu=False)
    assert not torch.allclose(plain.model.visual.transformer.resblocks[0].mlp.gelu(x), act(x))


@pytest.fixture(scope="module")
def b32_safetensors(vit_random, tmp_path_factory):
    """The random ViT-B/32 saved once as safetensors (578 MB in fp32), deleted after this module."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("ckpt") / "random_vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit_random.model.state_dict().items()}, str(path))
    yield path
    path.unlink()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_checkpoint_roundtrip(vit_random, b32_safetensors, tmp_path, suffix):
    path = b32_safetensors
    if suffix == ".pt":
        path = tmp_path / "random_vit.pt"
        torch.save({k: v.contiguous() for k, v in vit_random.model.state_dict().items()}, path)
    loaded = models.load_model("ViT-B-32", str(path), device="cpu", dtype="float32")
    assert loaded.quick_gelu == vit_random.quick_gelu
    assert _state_equal(vit_random.model, loaded.model)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    assert torch.equal(models.encode_images(vit_random, x), models.encode_images(loaded, x))


def test_missing_checkpoint_file_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="weights"):
        models.load_model("ViT-B-32", str(tmp_path / "absent.pt"), device="cpu")


def test_unknown_model_and_tag_are_value_errors():
    with pytest.raises(ValueError, match="model="):
        models.load_model("ViT-Q-99", "random")
    with pytest.raises(ValueError, match="Tags for ViT-B-32"):
        models.load_model("ViT-B-32", "not-a-tag")
    with pytest.raises(ValueError, match="dtype"):
        models.load_model("ViT-B-32", "random", dtype="int8")


def test_device_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if hasattr(torch.backends, "mps"):
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert models.resolve_device("auto").type == "cpu"
    if hasattr(torch.backends, "mps"):
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
        assert models.resolve_device("auto").type == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert models.resolve_device("auto").type == "cuda"


@pytest.mark.skipif(models.hub_reachable(), reason="the model hub is reachable from here")
def test_unavailable_weights_fail_fast_with_alternatives(tmp_path):
    """Fresh interpreter, empty cache, no env tweaks: the real offline path.

    "Fast" is asserted as a mechanism, not a wall time: one reachability probe,
    offline mode switched on, and no download attempted (so no retries).
    """
    code = textwrap.dedent(
        """
        import socket
        import huggingface_hub
        import open_clip.pretrained as op
        from huggingface_hub import constants
        calls = {"connect": 0, "download": 0}
        real_connect = socket.create_connection
        def counting_connect(*a, **k):
            calls["connect"] += 1
            return real_connect(*a, **k)
        def no_download(*a, **k):
            calls["download"] += 1
            raise RuntimeError("download attempted")
        socket.create_connection = counting_connect
        op.download_pretrained_from_hf = no_download
        huggingface_hub.hf_hub_download = no_download
        from helpers import models
        try:
            models.load_model("ViT-B-32", "openai", device="cpu")
        except models.WeightsUnavailableError as e:
            print("CALLS", calls["connect"], calls["download"], constants.HF_HUB_OFFLINE)
            print(e)
        else:
            print("LOADED")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["HF_HOME"] = str(tmp_path / "hf")
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "LOADED" not in out.stdout, "random weights must never be substituted"
    assert "CALLS" in out.stdout, out.stderr[-2000:]
    connects, downloads, offline = out.stdout.split("CALLS", 1)[1].split()[:3]
    assert int(connects) <= 1 and int(downloads) == 0 and offline == "True"
    msg = out.stdout
    assert "weights='random'" in msg and ".safetensors" in msg
    assert str(tmp_path / "hf") in msg  # names the cache it looked in


def test_zero_shot_probs_softmax_of_scaled_cosine():
    img = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    p = models.zero_shot_probs(img, txt, 100.0)
    ref = np.exp(100 * img.numpy() @ txt.numpy().T)
    ref /= ref.sum(1, keepdims=True)
    assert np.allclose(p.numpy(), ref, atol=1e-5)


def test_assignment_table_planted_fractions():
    # 4 cells of a 2x2 grid; cell 0 all label a, cell 1 all b, cells 2-3 half/half
    pos = np.array([[10, 10]] * 4 + [[90, 10]] * 4 + [[10, 90]] * 4 + [[90, 90]] * 4, dtype=float)
    choice = np.array([0] * 4 + [1] * 4 + [0, 0, 1, 1] * 2)
    probs = np.eye(2)[choice] * 0.8 + 0.1
    tab = models.assignment_table(probs, ["a", "b"], pos, grid=2, extent=(0, 100, 0, 100))
    assert tab["a"][0] == pytest.approx(0.5) and tab["b"][0] == pytest.approx(0.5)
    assert tab["a"][1] == pytest.approx(np.std([1, 0, 0.5, 0.5]))


def test_zero_shot_table_rows_sum_to_one(vit_random):
    s = stimuli.make_stimuli(32, seed=0)
    feats = models.embed_stimuli(vit_random, stimuli.iter_batches(s, vit_random.preprocess, 16), progress=False)
    assert feats.shape == (32, 512)
    assert np.allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-5)
    df = models.zero_shot_table(vit_random, feats, s.positions, grid=2, extent=s.extent)
    assert list(df.index) == list(models.PROMPT_SETS)
    means = df[[c for c in df.columns if c.endswith("_mean")]]
    assert np.allclose(means.sum(axis=1, skipna=True), 1.0)
    assert df.loc["shape only", "empty_mean"] != df.loc["shape only", "empty_mean"]  # NaN: no such prompt
    text = models.format_table(df)
    assert text.loc["shape only", "Empty"] == "-"


def test_embeddings_are_in_stimulus_order(vit_random):
    s = stimuli.make_stimuli(6, seed=4)
    fwd = models.embed_stimuli(vit_random, stimuli.iter_batches(s, vit_random.preprocess, 4), progress=False)
    rev = models.embed_stimuli(
        vit_random, stimuli.iter_batches(s, vit_random.preprocess, 4, indices=[5, 4, 3, 2, 1, 0]), progress=False
    )
    assert np.allclose(fwd, rev, atol=1e-5)


def test_input_size_from_config_without_weights():
    assert models.input_size("ViT-B-32") == 224
    assert models.input_size("ViT-L-14-336") == 336
    with pytest.raises(ValueError, match="model="):
        models.input_size("nope")


def test_a_file_that_is_no_safe_checkpoint_is_refused_by_name_and_never_executed(b32_safetensors, tmp_path):
    import pickle

    marker = tmp_path / "code-ran"

    class Payload:  # unpickling this would run code
        def __reduce__(self):
            return (open, (str(marker), "w"))

    files = {"junk.pt": b"not a checkpoint", "evil.pt": pickle.dumps({"w": Payload()}),
             "cut.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":"}
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ValueError) as err:
            models.load_model("ViT-B-32", str(path), device="cpu", dtype="float32")
        assert str(path) in str(err.value) and "weights_only=False" not in str(err.value)
    assert not marker.exists()
    with pytest.raises(ValueError, match="ViT-B-16"):  # a real checkpoint of another architecture
        models.load_model("ViT-B-16", str(b32_safetensors), device="cpu")


# --------------------------------------------------------------------------- dtype "auto"


def _fake_cpu(monkeypatch, capability: str, flags: set, machine: str = "x86_64") -> None:
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(models, "_cpu_flags", lambda: set(flags))
    monkeypatch.setattr(models.platform, "machine", lambda: machine)


@pytest.mark.fast
@pytest.mark.parametrize("capability, flags, machine, native", [
    ("AVX512", {"avx2", "avx512f", "avx512_bf16"}, "x86_64", True),   # AMD Zen 4/5
    ("AVX512", {"avx2", "avx512f", "amx_bf16"}, "x86_64", True),      # Intel with AMX
    ("AVX512", {"avx2", "avx512f"}, "x86_64", False),                 # AVX-512 without bf16 (Skylake)
    ("AVX2", {"avx2"}, "x86_64", False),                              # AMD Zen 3: bf16 emulated
    ("AVX2", {"avx2", "avx512_bf16"}, "x86_64", False),               # ATen capped at AVX2
    ("DEFAULT", {"asimd", "bf16"}, "aarch64", True),                  # Armv8.6 BF16
    ("DEFAULT", {"asimd"}, "aarch64", False),
])
def test_auto_dtype_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, capability, flags, machine, native):
    _fake_cpu(monkeypatch, capability, flags, machine)
    assert models.native_bf16("cpu")[0] is native
    dt, why = models.choose_dtype("auto", "cpu")
    assert dt == (torch.bfloat16 if native else torch.float32)
    assert why.startswith("auto") and capability in why
    assert models.resolve_dtype("float32", "cpu") == torch.float32   # explicit dtypes are kept


@pytest.mark.fast
@pytest.mark.parametrize("supported", [True, False])
def test_auto_dtype_on_cuda_follows_its_bf16_support(monkeypatch, supported):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    assert models.choose_dtype("auto", "cuda")[0] == (torch.bfloat16 if supported else torch.float32)


@pytest.mark.fast
def test_explicit_bf16_on_an_emulating_cpu_warns_with_the_measured_slowdown(monkeypatch):
    import warnings

    _fake_cpu(monkeypatch, "AVX2", {"avx2"})
    monkeypatch.setattr(models, "matmul_peaks", lambda: {"float32": 57.0, "bfloat16": 5.0})
    with pytest.warns(RuntimeWarning, match=r"11\.4"):   # 57 / 5 GFLOP/s, from the probe
        assert models.choose_dtype("bfloat16", "cpu")[0] == torch.bfloat16
    _fake_cpu(monkeypatch, "AVX512", {"avx512f", "avx512_bf16"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert models.choose_dtype("bfloat16", "cpu")[0] == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        models.choose_dtype("bf16", "cpu")


@pytest.mark.fast
def test_matmul_peaks_measures_both_dtypes():
    peaks = models.matmul_peaks.__wrapped__(64, 0.02)
    assert set(peaks) == {"float32", "bfloat16"} and all(v > 0 and np.isfinite(v) for v in peaks.values())


@pytest.mark.parametrize("native", [True, False])
def test_model_identity_records_the_dtype_auto_chose(monkeypatch, native):
    _fake_cpu(monkeypatch, "AVX512" if native else "AVX2", {"avx2", "avx512_bf16"} if native else {"avx2"})
    lm = models.load_model("ViT-B-32", "random", device="cpu", seed=0)   # dtype defaults to "auto"
    ident = models.model_identity(lm)
    want = "bfloat16" if native else "float32"
    assert next(lm.model.parameters()).dtype == lm.dtype == getattr(torch, want)
    assert ident["dtype"] == want and ident["dtype_requested"] == "auto" and ident["dtype_reason"].startswith("auto")


@pytest.mark.fast
def test_params_accept_dtype_auto():
    from helpers.params import validate

    validate({"dtype": "auto"})
    with pytest.raises(ValueError, match="dtype"):
        validate({"dtype": "bf16"})


def test_assignment_table_cells_are_the_ratemap_bins():
    # the location cells are helpers.ratemaps' bins (row-major, y down); one cell: SD 0; outside the extent: refused
    pos = np.array([[10, 60], [60, 60], [60, 10], [99.9, 99.9]], dtype=float)
    probs = np.eye(2)[[0, 1, 1, 0]]
    assert np.array_equal(ratemaps.flat_bin_indices(pos, 2, (0, 100, 0, 100)), [2, 3, 1, 3])
    tab = models.assignment_table(probs, ["a", "b"], pos, grid=2, extent=(0, 100, 0, 100))
    assert tab["a"][0] == pytest.approx(np.mean([0, 1, 0.5]))  # cells 1, 2, 3 (cell 0 empty, skipped)
    one = models.assignment_table(probs, ["a", "b"], pos, grid=1, extent=(0, 100, 0, 100))
    assert one["a"] == (0.5, 0.0)
    with pytest.raises(ValueError, match="extent"):
        models.assignment_table(probs, ["a", "b"], pos + 200, grid=2, extent=(0, 100, 0, 100))
