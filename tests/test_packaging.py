"""Packaging and notebook hygiene: one list of requirements, paired and stripped notebooks."""

import json
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_environment_yml_installs_the_package_with_all_extras():
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in environment["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    assert any(d.startswith("python=3.11") for d in conda)
    assert pip == ["-e .[dev]"], "the pip section must only install the package with extras"
    extras = _pyproject()["optional-dependencies"]
    dev = {name for item in extras["dev"]
           for name in re.sub(r"polar_vbll\[|\]", "", item).split(",")}
    assert dev == set(extras) - {"dev"}, "the dev extra must pull every other extra"
    # conda lists nothing that pyproject does not (only python and pip itself).
    assert {re.split(r"[=<>]", d)[0] for d in conda} == {"python", "pip"}


def test_named_packages_are_required():
    project = _pyproject()
    listed = " ".join(project["dependencies"] + sum(project["optional-dependencies"].values(),
                                                    []))
    for package in ("jupyterlab", "torch", "transformers", "ipywidgets", "plotly", "geoopt",
                    "jupytext", "nbmake"):
        assert re.search(rf"\b{package}\b", listed), package


def test_console_script_points_at_the_cli():
    assert _pyproject()["scripts"]["polar-vbll"] == "polar_vbll.cli:main"


def test_seven_notebooks_are_paired_and_stripped():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["00", "01", "02", "03", "04", "05", "06"]
    for source in NOTEBOOKS:
        notebook = source.with_suffix(".ipynb")
        assert notebook.is_file(), f"{source.name} has no paired .ipynb"
        cells = json.loads(notebook.read_text())["cells"]
        for cell in cells:
            if cell["cell_type"] == "code":
                assert not cell["outputs"] and cell["execution_count"] is None, \
                    f"{notebook.name} has committed outputs"


def test_pairs_are_in_sync():
    """The .py source and the .ipynb hold the same cells (type, source, tags)."""
    import jupytext

    def cells(notebook):
        return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", [])))
                for c in notebook.cells]

    for source in NOTEBOOKS:
        from_py = jupytext.read(source)
        from_ipynb = jupytext.read(source.with_suffix(".ipynb"))
        assert cells(from_py) == cells(from_ipynb), \
            f"{source.name} and its .ipynb differ: run `make sync`"


def test_every_notebook_has_the_common_opening():
    for source in NOTEBOOKS:
        text = source.read_text()
        assert "colab.research.google.com/github/polar-vbll/polar_vbll/blob/main/notebooks/" \
            f"{source.stem}.ipynb" in text, source.name
        assert 'tags=["parameters"]' in text and "POLAR_VBLL_PROFILE" in text, source.name
        assert "find_spec(\"polar_vbll\")" in text, source.name
        assert "calibration_explorer" in text, source.name
        assert "solution" in text, source.name


def test_the_colab_extra_is_light_and_keeps_the_runtimes_torch():
    """The notebooks' install cell asks for [colab]: no JupyterLab, no jupyter-book, no pinned
    torch (Colab brings its own)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    colab = " ".join(extras["colab"])
    assert "jupyterlab" not in colab and "jupyter-book" not in colab and "notebooks" not in colab
    torch_requirement = [d for d in project["dependencies"] if d.startswith("torch")]
    assert torch_requirement == ["torch>=2.2"]  # a range any Colab torch satisfies
    for notebook in sorted((ROOT / "notebooks").glob("0*.py")):
        text = notebook.read_text()
        assert "polar_vbll[colab] @ git+" in text and "[notebooks]" not in text, notebook.name
