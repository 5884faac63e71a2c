"""The README's examples run as they are written (on CPU tensors, with the default backend)."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _examples():
    text = README.read_text()
    section = text.split("\n## Examples\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_has_examples():
    assert len(_examples()) >= 6


@pytest.mark.parametrize("k", range(len(_examples())))
def test_readme_example_runs(k):
    exec(compile(_examples()[k], f"README example {k}", "exec"), {})
