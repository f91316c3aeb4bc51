"""flowlearn.jobs.interop uses PyFlink internals (``_j_data_stream``, Java key selectors and
timestamp assigners): they were checked against one Flink version, and the job must run on
that one. tests/minicluster/test_interop.py runs each of them."""

import pyflink.version

from flowlearn.conf import versions
from flowlearn.jobs import interop


def test_the_interop_module_was_written_for_the_pinned_flink() -> None:
    assert versions.FLINK_VERSION == interop.WRITTEN_FOR_FLINK, (
        "the Flink pin moved: re-check every function of flowlearn.jobs.interop against the "
        "new PyFlink (its Java classes and private attributes), then update WRITTEN_FOR_FLINK"
    )
    assert pyflink.version.__version__ == versions.FLINK_VERSION
