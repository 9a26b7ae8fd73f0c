"""tools/bench_accuracy.py measures the pruning process's own peak RSS, not its parent's."""
import importlib.util
import sys
import tempfile
from pathlib import Path

import numpy as np

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_accuracy.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("bench_accuracy", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peak_rss_is_the_childs_not_inherited_from_a_large_parent():
    tool = load_tool()
    ballast = np.ones(300 * 2 ** 20, dtype=np.uint8)          # this process: 300 MB resident
    grow = "import numpy as np; a = np.ones(150 * 2 ** 20, dtype=np.uint8); print(a.sum())"
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        code, small = tool.measured([sys.executable, "-c", "pass"], out, err)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        code_big, big = tool.measured([sys.executable, "-c", grow], out, err)
        out.seek(0)
        assert out.read().strip() == str(150 * 2 ** 20)
    assert code == code_big == 0 and ballast[0] == 1
    assert small < 100                    # a bare interpreter, not our 300 MB
    assert 150 <= big < 300
