"""The Java RecordBundler (operators/java) on a MiniCluster: what goes in comes out, in order,
in bundles within their limits."""

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyflink.common import Types

from flowlearn.conf import load_settings
from flowlearn.devstack.jars import operators_jar
from flowlearn.jobs.local import local_environment, raw_stream
from flowlearn.jobs.online_learning import INPUT_BUNDLE_MAX_BYTES, bundled
from flowlearn.operators.parse import unbundle

pytestmark = pytest.mark.minicluster


def digest(record: bytes) -> str:
    return hashlib.sha256(record).hexdigest()


def bundles_of(records, **env):
    """The bundles, each a list of its records' digests (records not empty: the test source
    drops empty ones)."""
    conf = load_settings(env=env)
    flink = local_environment(operators_jar(conf))
    out = bundled(raw_stream(flink, records), conf, "bundles").map(
        lambda b: [digest(r) for r in unbundle(bytes(b))], output_type=Types.LIST(Types.STRING())
    )
    with out.execute_and_collect() as results:
        return [list(bundle) for bundle in results]


def test_records_come_out_whole_in_order_in_bundles_within_the_limits():
    records = [f"r{i}".encode() * (i % 7 + 1) for i in range(200)]
    records.append(b"x" * (INPUT_BUNDLE_MAX_BYTES + 10))  # larger than a bundle: alone
    records.append(b"last")
    out = bundles_of(records, FLOWLEARN__JOB__INPUT_BUNDLE_RECORDS="16")
    assert [r for bundle in out for r in bundle] == [digest(r) for r in records]
    assert all(1 <= len(bundle) <= 16 for bundle in out)
    assert [digest(records[-2])] in out
    # A bundled source sends bundles, not records: far fewer calls to Python.
    assert len(out) < len(records) / 4


@settings(max_examples=5, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=60),
    st.integers(min_value=1, max_value=9),
)
def test_any_records_survive_the_framing(records, per_bundle):
    out = bundles_of(records, FLOWLEARN__JOB__INPUT_BUNDLE_RECORDS=str(per_bundle))
    assert [r for bundle in out for r in bundle] == [digest(r) for r in records]
    assert max(map(len, out)) <= per_bundle


def test_no_wait_sends_every_record_alone():
    records = [b"a", b"b", b"c"]
    out = bundles_of(records, FLOWLEARN__JOB__INPUT_BUNDLE_MS="0")
    assert out == [[digest(r)] for r in records]
