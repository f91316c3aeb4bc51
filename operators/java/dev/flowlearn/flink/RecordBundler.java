package dev.flowlearn.flink;

import java.util.Arrays;

import org.apache.flink.api.common.operators.ProcessingTimeService.ProcessingTimeCallback;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;

/**
 * Packs the raw records of a stream (Kafka record values) into bundles, so that the Python
 * operator after it is called once per bundle rather than once per record: in PyFlink every
 * record handed to Python pays a fixed cost (Beam coding, a function call through the
 * framework) that is larger than parsing a small JSON sample.
 *
 * <p>A bundle is the records in arrival order, each framed as a 4-byte big-endian length and
 * the bytes. It is emitted when it holds {@code maxRecords} records, when one more record
 * would take it past {@code maxBytes} (a record larger than that travels alone), when its
 * oldest record has waited {@code maxDelayMs} of processing time, before every checkpoint
 * barrier, before every watermark and at the end of the input.
 *
 * <p>Emitting before the barrier is what keeps exactly-once without state: no record is ever
 * held in this operator across a checkpoint, so the source's offsets in a checkpoint cover
 * exactly the records that went downstream before it (Flink's own mini-batch operators do the
 * same in {@code prepareSnapshotPreBarrier}).
 */
public class RecordBundler extends AbstractStreamOperator<byte[]>
        implements OneInputStreamOperator<byte[], byte[]>, ProcessingTimeCallback {

    private static final long serialVersionUID = 1L;

    private final int maxRecords;
    private final int maxBytes;
    private final long maxDelayMs;

    private transient byte[] buffer;
    private transient int size;
    private transient int count;
    private transient boolean timerPending;

    public RecordBundler(int maxRecords, int maxBytes, long maxDelayMs) {
        if (maxRecords < 1 || maxBytes < 1 || maxDelayMs < 0) {
            throw new IllegalArgumentException(String.format(
                    "RecordBundler needs maxRecords >= 1, maxBytes >= 1 and maxDelayMs >= 0, "
                            + "not %d, %d, %d", maxRecords, maxBytes, maxDelayMs));
        }
        this.maxRecords = maxRecords;
        this.maxBytes = maxBytes;
        this.maxDelayMs = maxDelayMs;
    }

    @Override
    public void open() throws Exception {
        super.open();
        buffer = new byte[Math.min(maxBytes, 1 << 16) + 4];
        size = 0;
        count = 0;
        timerPending = false;
    }

    @Override
    public void processElement(StreamRecord<byte[]> element) throws Exception {
        byte[] record = element.getValue();
        int framed = record.length + 4;
        if (count > 0 && size + framed > maxBytes) {
            emit();
        }
        if (size + framed > buffer.length) {
            buffer = Arrays.copyOf(buffer, Math.max(size + framed, buffer.length * 2));
        }
        int n = record.length;
        buffer[size] = (byte) (n >>> 24);
        buffer[size + 1] = (byte) (n >>> 16);
        buffer[size + 2] = (byte) (n >>> 8);
        buffer[size + 3] = (byte) n;
        System.arraycopy(record, 0, buffer, size + 4, n);
        size += framed;
        count++;
        if (count >= maxRecords || size >= maxBytes || maxDelayMs == 0) {
            emit();
        } else if (!timerPending) {
            timerPending = true;
            long now = getProcessingTimeService().getCurrentProcessingTime();
            getProcessingTimeService().registerTimer(now + maxDelayMs, this);
        }
    }

    @Override
    public void onProcessingTime(long time) throws Exception {
        timerPending = false;
        emit();
    }

    @Override
    public void processWatermark(Watermark mark) throws Exception {
        // Records emitted after a watermark would be behind it.
        emit();
        super.processWatermark(mark);
    }

    @Override
    public void prepareSnapshotPreBarrier(long checkpointId) throws Exception {
        emit();
        super.prepareSnapshotPreBarrier(checkpointId);
    }

    @Override
    public void finish() throws Exception {
        emit();
        super.finish();
    }

    /**
     * What goes downstream for the {@code count} framed records in {@code framed[0, size)}:
     * here, those bytes (a subclass may add what it decodes from them).
     */
    protected byte[] bundle(byte[] framed, int size, int count) {
        return Arrays.copyOf(framed, size);
    }

    private void emit() {
        if (count == 0) {
            return;
        }
        output.collect(new StreamRecord<>(bundle(buffer, size, count)));
        size = 0;
        count = 0;
    }
}
