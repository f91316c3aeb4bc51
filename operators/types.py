"""Typed records flowing between the job's operators (never pickled objects)."""

from pyflink.common import Types

#: Parsed, validated, labelled samples of one model: n labels and n x n_features features
#: (row-major, flat); ts is the latest event time among them. The per-record cost is paid
#: once for all: a bulk record is one row, and so are the JSON samples of one model within a
#: bundle of records (``job.input_bundle_records``). ``event_ids`` holds one id per sample
#: ("" for a sample without) when any JSON sample had one (the trainer drops a sample whose id
#: it has seen), else nothing: bulk records, and pairs from the label join, which deduplicates
#: them itself.
SAMPLE_TYPE = Types.ROW_NAMED(
    ["model_id", "ts", "features", "labels", "event_ids"],
    [Types.STRING(), Types.LONG(), Types.PRIMITIVE_ARRAY(Types.DOUBLE()),
     Types.PRIMITIVE_ARRAY(Types.DOUBLE()), Types.BASIC_ARRAY(Types.STRING())],
)

#: What the samples parser and the label join emit: the model id, then the sample row (the
#: pair a keyed Python operator takes; ``flowlearn.jobs.online_learning.keyed_by_model``).
KEYED_SAMPLE_TYPE = Types.ROW([Types.STRING(), SAMPLE_TYPE])

#: An event (kind "e": features, label NaN) or a label (kind "l": label and the record's raw
#: bytes, kept for the DLQ should it come late), on its way to the label join.
FEEDBACK_TYPE = Types.ROW_NAMED(
    ["kind", "model_id", "event_id", "ts", "features", "label", "raw"],
    [Types.STRING(), Types.STRING(), Types.STRING(), Types.LONG(),
     Types.PRIMITIVE_ARRAY(Types.DOUBLE()), Types.DOUBLE(), Types.PRIMITIVE_ARRAY(Types.BYTE())],
)

#: A feedback row with its model id in front (the pair a keyed Python operator takes).
KEYED_FEEDBACK_TYPE = Types.ROW([Types.STRING(), FEEDBACK_TYPE])

#: What the events and labels parsers emit: the (model id, row) pair and its event time
#: (``ts``), for the job's Java timestamp assigner
#: (``flowlearn.jobs.online_learning.with_event_time``).
TIMED_FEEDBACK_TYPE = Types.TUPLE([KEYED_FEEDBACK_TYPE, Types.LONG()])

#: A control command for one model (args as a JSON object string).
CONTROL_TYPE = Types.ROW_NAMED(
    ["model_id", "command", "args", "ts", "source"],
    [Types.STRING(), Types.STRING(), Types.STRING(), Types.LONG(), Types.STRING()],
)

#: One new version as the monitoring operators see it: ``kind`` is "train" (a trained batch,
#: with what the test step saw: 0/1 errors (empty for regression), per-sample losses and
#: the monitored features, n x n_monitored, flat), "rollback", "reset" or "warm_start"
#: (no samples).
#: ``weights`` (codec array bytes) and ``spec`` are set on checkpoint versions only.
EVAL_TYPE = Types.ROW_NAMED(
    ["model_id", "version", "kind", "samples_applied", "errors", "losses", "features",
     "n_monitored", "weights", "spec"],
    [Types.STRING(), Types.LONG(), Types.STRING(), Types.LONG(),
     Types.PRIMITIVE_ARRAY(Types.DOUBLE()), Types.PRIMITIVE_ARRAY(Types.DOUBLE()),
     Types.PRIMITIVE_ARRAY(Types.DOUBLE()), Types.INT(), Types.PRIMITIVE_ARRAY(Types.BYTE()),
     Types.STRING()],
)

#: A new model version, as the trainer hands it to the publisher; ``weights`` is empty when
#: only the delta is to be published.
VERSION_TYPE = Types.ROW_NAMED(
    ["model_id", "version", "base_version", "samples_applied", "spec", "delta", "weights"],
    [Types.STRING(), Types.LONG(), Types.LONG(), Types.LONG(), Types.STRING(),
     Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.PRIMITIVE_ARRAY(Types.BYTE())],
)

#: What the publisher confirms it wrote to Redis.
PUBLISHED_TYPE = Types.ROW_NAMED(
    ["model_id", "epoch", "version", "samples_applied"],
    [Types.STRING(), Types.LONG(), Types.LONG(), Types.LONG()],
)
