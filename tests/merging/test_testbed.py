"""The 4-task offline testbed (about a minute on idle cores): the literature's qualitative ordering.

The testbed is a benchmark fixture (``benchmarks/merge_testbed.py``), imported from the repository root."""

import statistics
import sys
from pathlib import Path

import pytest

import vitkit

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import merge_testbed as tb  # noqa: E402


@pytest.mark.slow
def test_quick_testbed_ordering():
    bed = tb.build_testbed(tb.quick_config())
    fts = [bed.finetuned[t] for t in bed.cfg.tasks]
    pre = bed.average_accuracy(bed.base)
    ind = bed.individual_accuracy()
    avg = bed.average_accuracy(vitkit.merge(fts, vitkit.AverageConfig()))
    ta = bed.average_accuracy(vitkit.merge(fts, vitkit.TaskArithmeticConfig(scaling=0.3), base=bed.base))
    orders = ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2])
    opcm = [bed.average_accuracy(vitkit.merge([fts[i] for i in o], vitkit.OPCMConfig(), base=bed.base)) for o in orders]
    assert ind > max(avg, ta, *opcm)
    assert min(avg, ta, *opcm) > pre
    assert ta > avg  # 8 tasks: ≥ 5 points (benchmarks/merge.py); 4 short tasks: measured +3.1
    assert max(opcm) - min(opcm) <= 0.015 and statistics.mean(opcm) >= ta
