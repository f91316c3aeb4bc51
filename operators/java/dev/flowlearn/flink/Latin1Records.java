package dev.flowlearn.flink;

import java.nio.charset.StandardCharsets;

import org.apache.flink.api.common.functions.FlatMapFunction;
import org.apache.flink.util.Collector;

/**
 * Records of a bounded local stream back to the bytes a KafkaSource gives: PyFlink's
 * {@code from_collection} cannot carry byte arrays, so each record travels as a latin-1
 * string (a lossless byte mapping), and the empty string stands for an empty input (a
 * collection cannot be empty). Done here, in Java, where a Python map and filter cost two
 * round trips to a Python worker for every record (flowlearn.jobs.local.raw_stream).
 */
public final class Latin1Records implements FlatMapFunction<String, byte[]> {

    private static final long serialVersionUID = 1L;

    @Override
    public void flatMap(String record, Collector<byte[]> out) {
        if (!record.isEmpty()) {
            out.collect(record.getBytes(StandardCharsets.ISO_8859_1));
        }
    }
}
