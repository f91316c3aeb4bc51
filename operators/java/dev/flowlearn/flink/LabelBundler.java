package dev.flowlearn.flink;

/**
 * A {@link SampleBundler} for {@code fl.labels}: the same decoding and the same bundle
 * layout, for labels. A label is decoded when it has an event id and a numeric label; it
 * needs no features (a {@code features} field, which a label does not use, is read if it is
 * a list of numbers and otherwise leaves the record to Python, like any field it cannot be
 * sure of).
 */
public final class LabelBundler extends SampleBundler {

    private static final long serialVersionUID = 1L;

    public LabelBundler(int maxRecords, int maxBytes, long maxDelayMs) {
        super(maxRecords, maxBytes, maxDelayMs);
    }

    @Override
    protected boolean complete(SampleJson record) {
        return record.hasLabel && record.eventIdEnd > record.eventIdStart;
    }
}
