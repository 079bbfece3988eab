"""The package installs from source with the standard build backend, with numpy as
its only runtime dependency, and is the package the book tangles."""
import subprocess
import sys

import pytest

from _support import ROOT, clean_env, fresh_venv, pip_offline, run


@pytest.mark.slow
def test_pip_install_into_fresh_venv(tmp_path):
    py = fresh_venv(tmp_path / "venv")
    pip_offline(py, ROOT)
    freeze = run([py, "-m", "pip", "list", "--format=freeze"]).stdout.lower()
    installed = {line.split("==")[0] for line in freeze.splitlines() if line}
    expected = {"cnnbook", "numpy", "threadpoolctl"}  # the package's only dependencies
    assert installed - {"pip", "setuptools", "wheel"} == expected, freeze
    code = (
        "import cnnbook, cnnbook.layers, cnnbook.layer_utils, cnnbook.gradient_check\n"
        "from cnnbook.layers import affine_forward, relu_forward\n"
        "import numpy as np\n"
        "out, cache = affine_forward(np.ones((2, 3)), np.ones((3, 4)), np.zeros(4))\n"
        "assert out.shape == (2, 4)\n"
        "print(cnnbook.__version__, cnnbook.__file__)\n"
    )
    out = run([py, "-c", code], cwd=tmp_path).stdout
    assert str(tmp_path / "venv") in out, out  # imported from the venv, not from the repository
    # The installed package says where the book explains a function, from a bare `import cnnbook`.
    out = run([py, "-c", "import cnnbook; help(cnnbook.layers.conv_forward_naive)"],
              cwd=tmp_path, env=clean_env(PAGER="cat")).stdout
    assert ('Explained in the chapter "The convolutional layer" (book/convolution.md), '
            'section "The naive layer".') in out, out
    # ... without importing the other modules (matplotlib is not even installed here).
    code = "import sys, cnnbook; print(sorted(m for m in sys.modules if m.startswith('cnnbook')))"
    assert run([py, "-c", code], cwd=tmp_path).stdout.strip() == "['cnnbook']"


def test_tangled_package_is_up_to_date():
    proc = subprocess.run([sys.executable, ROOT / "tools" / "tangle.py", "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
