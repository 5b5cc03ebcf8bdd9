import json

import pytest
import yaml

from helpers import study
from helpers.paths import REPO_ROOT
from stub_notebooks import write_stage


def test_parse_overrides_types():
    o = study.parse_overrides(["weights=random", "N_STIMULI=300", "shapes=[circle, square]", "inside=true"])
    assert o == {"weights": "random", "n_stimuli": 300, "shapes": ["circle", "square"], "inside": True}
    with pytest.raises(ValueError, match="key=value"):
        study.parse_overrides(["weights"])


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("weights: random\nn_stimuli: 100\n")
    params = study.load_params(p, {"n_stimuli": 50})
    assert params == {"weights": "random", "n_stimuli": 50}


def test_notebooks_declare_parameters_and_carry_no_outputs():
    nbs = study.notebooks()
    assert nbs and nbs[0].name == "01_design.ipynb"
    for nb in nbs:
        doc = json.loads(nb.read_text())
        assert doc["metadata"]["kernelspec"]["name"] == "python3", nb
        tagged = [c for c in doc["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{nb.name}: exactly one cell tagged 'parameters'"
        for c in doc["cells"]:
            if c["cell_type"] == "code":
                assert not c.get("outputs") and c.get("execution_count") is None, f"{nb.name} has outputs"
        assert "run_dir" in study.notebook_parameters(nb)


def test_unknown_parameter_is_refused(tmp_path):
    with pytest.raises(ValueError, match="n_stimulus"):
        study.run_study({"n_stimulus": 5}, run=str(tmp_path / "r"), prepare_only=True)


def test_prepare_only_injects_parameters(tmp_path):
    folder = study.run_study(
        {"weights": "random", "n_stimuli": 12}, run=str(tmp_path / "r"), stages=["01"], prepare_only=True
    )
    nb = json.loads((folder / "01_design.ipynb").read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    src = "".join(injected[0]["source"])
    assert "n_stimuli = 12" in src and 'weights = "random"' in src
    assert f'run_dir = "{folder}"' in src
    saved = yaml.safe_load((folder / "params.yaml").read_text())
    assert saved["n_stimuli"] == 12 and saved["run_dir"] == str(folder)


def test_default_run_name():
    assert study.default_run_name({"model": "ViT-B-32", "weights": "random", "n_stimuli": 300}) == "ViT-B-32_random_n300"
    assert study.default_run_name({"model": "ViT-B-32", "weights": "/x/ckpt.safetensors", "n_stimuli": 5}) == "ViT-B-32_ckpt_n5"


def test_make_and_ci_call_the_same_test_command():
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    readme = (REPO_ROOT / "README.md").read_text()
    assert "make test" in readme and "make study" in readme


def test_notebook_defaults_are_python_literals():
    assert study._literal("None") is None
    assert study._literal("[0, .05, 1]") == [0, 0.05, 1]
    assert study._literal('{"circle": "a black circle"}') == {"circle": "a black circle"}
    assert study._literal('"openai"') == "openai"


def test_every_parameter_line_is_parsed_by_papermill():
    """papermill skips a line it can't parse with only a warning; the runner would then drop it."""
    import ast

    for nb in study.notebooks():
        doc = json.loads(nb.read_text())
        cell = next(c for c in doc["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
        tree = ast.parse("".join(cell["source"]))
        assigned = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets}
        assert assigned == set(study.notebook_parameters(nb)), nb.name


def test_run_path_accepts_a_data_prefix(tmp_path, monkeypatch):
    from helpers import paths

    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(paths, "DATA_DIR", tmp_path / "data")
    assert paths.run_path("quick") == tmp_path / "data" / "quick"
    assert paths.run_path("data/quick") == tmp_path / "data" / "quick"
    assert paths.run_path(tmp_path / "elsewhere") == tmp_path / "elsewhere"
    assert not (tmp_path / "data" / "data").exists()


def test_the_runner_starts_its_kernels_with_the_heap_malloc_settings(tmp_path, monkeypatch):
    write_stage(tmp_path / "nb" / "01_env.ipynb", "run_dir = 'x'\n",  # the kernel writes the settings it got
                "import json, os\nfrom pathlib import Path\n"
                f"keys = {sorted(study.KERNEL_MALLOC)!r}\n"
                "Path(run_dir, 'env.json').write_text(json.dumps({k: os.environ.get(k) for k in keys}))\n")
    monkeypatch.setattr(study, "NOTEBOOK_DIR", tmp_path / "nb")
    monkeypatch.setattr(study, "preflight", lambda params: None)
    for key in study.KERNEL_MALLOC:
        monkeypatch.delenv(key, raising=False)  # restored after the test
    assert study.main(["--run", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "env.json").read_text()) == study.KERNEL_MALLOC


def test_the_heap_malloc_settings_change_no_number():
    """A forward in a process started with the kernels' malloc settings gives the same bytes as one without."""
    import os
    import subprocess
    import sys

    code = ("import sys, torch\nfrom helpers import models\n"
            "lm = models.load_model('ViT-B-32', 'random', device='cpu', dtype='float32', seed=0)\n"
            "x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(3))\n"
            "sys.stdout.buffer.write(models.encode_images(lm, x).numpy().tobytes())\n")
    plain = {k: v for k, v in os.environ.items() if k not in study.KERNEL_MALLOC}
    outs = [subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(REPO_ROOT)},
                           capture_output=True, check=True, timeout=600).stdout
            for env in (plain, {**plain, **study.KERNEL_MALLOC})]
    assert len(outs[0]) == 8 * 512 * 4 and outs[0] == outs[1]
