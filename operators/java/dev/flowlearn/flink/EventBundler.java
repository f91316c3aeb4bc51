package dev.flowlearn.flink;

/**
 * A {@link SampleBundler} for {@code fl.events}: the same decoding and the same bundle
 * layout, for events. An event is decoded when it has an event id (a label, which an event
 * does not need, is read if it is a number and otherwise leaves the record to Python, like
 * any field it cannot be sure of); its label column is NaN when it has none.
 */
public final class EventBundler extends SampleBundler {

    private static final long serialVersionUID = 1L;

    public EventBundler(int maxRecords, int maxBytes, long maxDelayMs) {
        super(maxRecords, maxBytes, maxDelayMs);
    }

    @Override
    protected boolean complete(SampleJson record) {
        return record.nFeatures >= 0 && record.eventIdEnd > record.eventIdStart;
    }
}
