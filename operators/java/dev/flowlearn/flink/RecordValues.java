package dev.flowlearn.flink;

import org.apache.flink.api.common.serialization.DeserializationSchema;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;

/**
 * The value of each Kafka record as it is, with a record without a value (a tombstone) as an
 * empty one. Flink's {@code ByteArraySchema} gives null for it, and a source drops what its
 * schema makes null: a tombstone sent to an input topic vanished without a trace. As an empty
 * value it reaches the parsers, which dead-letter it ({@code not_json}) like any record that
 * is not a JSON object.
 */
public final class RecordValues implements DeserializationSchema<byte[]> {

    private static final long serialVersionUID = 1L;

    private static final byte[] NONE = new byte[0];

    @Override
    public byte[] deserialize(byte[] value) {
        return value == null ? NONE : value;
    }

    @Override
    public boolean isEndOfStream(byte[] nextElement) {
        return false;
    }

    @Override
    public TypeInformation<byte[]> getProducedType() {
        return PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO;
    }
}
