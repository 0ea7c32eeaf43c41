"""The 4-task offline testbed (about a minute on idle cores): the literature's qualitative ordering."""

import statistics

import pytest

import vitkit
from vitkit.merging import testbed as tb


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
