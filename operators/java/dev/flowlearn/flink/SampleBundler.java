package dev.flowlearn.flink;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;

/**
 * A {@link RecordBundler} for {@code fl.samples} that also decodes, in Java, the JSON samples
 * whose reading is certain, so that the Python parser checks them as arrays (numpy) instead
 * of one record at a time.
 *
 * <p>Only the syntax is decided here; every rule that needs a model's spec (the number of
 * features, what a label may be, the model id's pattern, how far ahead {@code ts} may be)
 * stays in Python. A record is decoded when it is a JSON object of at most 512 KiB whose
 * {@code model_id} and {@code event_id} (optional; {@code null} is none) are strings of
 * printable ASCII without escapes (an event id not empty), whose {@code ts} is an integer literal in [0, 2^62), whose
 * {@code label} is a number and whose {@code features} is a list of numbers, every number
 * finite as a float64, and whose other fields are well-formed JSON of printable ASCII. Any
 * other record (a map of features, a bulk Arrow record, anything malformed or unusual) is
 * left to the Python parser, which reads the raw bytes as before: its dead-letter reasons
 * and records are the only ones there are. Numbers come out as the Python parser makes
 * them: an integer literal as the float64 nearest to it, other literals correctly rounded.
 * {@link EventBundler} and {@link LabelBundler} decode events and labels the same way,
 * with the fields those need ({@link #complete}).
 *
 * <p>A bundle, little-endian but for the magic ({@code flowlearn.operators.sample_columns}
 * reads it):
 *
 * <pre>
 * bytes 0xFE 'F' 'L' '1'            (a RecordBundler bundle starts with a record's length,
 *                                    which is below 2^31: its first byte is never 0xFE)
 * int32 rawSize, then the records framed as RecordBundler frames them, zero-padded to 8
 * int32 nRecords, nDecoded, nModelIds, nFeatureValues, eventIdBytes, 0
 * int64[nDecoded] ts; float64[nDecoded] label; float64[nFeatureValues] features
 * int32[nRecords + 1] recordStarts    (of each record's frame in the raw records)
 * int32[nDecoded] recordIndex; int32[nDecoded] modelIdIndex
 * int32[nDecoded + 1] featureStarts; int32[nDecoded + 1] eventIdStarts (empty: none)
 * bytes[eventIdBytes] event ids, then nModelIds times: int32 length, the id's bytes
 * </pre>
 */
public class SampleBundler extends RecordBundler {

    private static final long serialVersionUID = 1L;

    /** Records above this are the Python parser's ({@code too_large}). */
    static final int MAX_RECORD_BYTES = 512 << 10;

    static final byte[] MAGIC = {(byte) 0xFE, 'F', 'L', '1'};

    private transient SampleJson json;

    public SampleBundler(int maxRecords, int maxBytes, long maxDelayMs) {
        super(maxRecords, maxBytes, maxDelayMs);
    }

    @Override
    protected byte[] bundle(byte[] framed, int size, int count) {
        if (json == null) {
            json = new SampleJson();
        }
        Columns columns = new Columns(count);
        int at = 0;
        for (int i = 0; i < count; i++) {
            int n = ((framed[at] & 0xFF) << 24) | ((framed[at + 1] & 0xFF) << 16)
                    | ((framed[at + 2] & 0xFF) << 8) | (framed[at + 3] & 0xFF);
            columns.recordStarts[i] = at;
            if (n <= MAX_RECORD_BYTES && json.decode(framed, at + 4, at + 4 + n) && complete(json)) {
                columns.add(i, json);
            }
            at += 4 + n;
        }
        columns.recordStarts[count] = at;
        return columns.write(framed, size);
    }

    /** Whether a record that decoded has every field this topic's records need: a sample
     * its features and label (its event id is optional). */
    protected boolean complete(SampleJson record) {
        return record.nFeatures >= 0 && record.hasLabel;
    }

    /** The decoded samples of one bundle, column by column. */
    private static final class Columns {
        final int[] recordStarts;
        int n;
        long[] ts;
        double[] label;
        double[] features = new double[256];
        int nValues;
        int[] recordIndex;
        int[] modelIdIndex;
        int[] featureStarts;
        int[] eventIdStarts;
        byte[] eventIds = new byte[64];
        int eventIdBytes;
        final HashMap<String, Integer> idIndex = new HashMap<>();
        final ArrayList<byte[]> ids = new ArrayList<>();

        Columns(int records) {
            recordStarts = new int[records + 1];
            ts = new long[records];
            label = new double[records];
            recordIndex = new int[records];
            modelIdIndex = new int[records];
            featureStarts = new int[records + 1];
            eventIdStarts = new int[records + 1];
        }

        void add(int record, SampleJson s) {
            recordIndex[n] = record;
            ts[n] = s.ts;
            label[n] = s.label;
            Integer id = idIndex.get(s.modelId);
            if (id == null) {
                id = ids.size();
                idIndex.put(s.modelId, id);
                ids.add(s.modelId.getBytes(StandardCharsets.US_ASCII));
            }
            modelIdIndex[n] = id;
            int nFeatures = Math.max(s.nFeatures, 0); // a label's record may have none
            if (nValues + nFeatures > features.length) {
                features = Arrays.copyOf(features, Math.max(nValues + nFeatures, 2 * features.length));
            }
            System.arraycopy(s.features, 0, features, nValues, nFeatures);
            nValues += nFeatures;
            if (s.eventIdEnd > s.eventIdStart) {
                int len = s.eventIdEnd - s.eventIdStart;
                if (eventIdBytes + len > eventIds.length) {
                    eventIds = Arrays.copyOf(eventIds, Math.max(eventIdBytes + len, 2 * eventIds.length));
                }
                System.arraycopy(s.bytes, s.eventIdStart, eventIds, eventIdBytes, len);
                eventIdBytes += len;
            }
            n++;
            featureStarts[n] = nValues;
            eventIdStarts[n] = eventIdBytes;
        }

        byte[] write(byte[] framed, int size) {
            int records = recordStarts.length - 1;
            int idBytes = 0;
            for (byte[] id : ids) {
                idBytes += 4 + id.length;
            }
            int rawPadded = (size + 7) & ~7;
            int total = 8 + rawPadded + 24 + 8 * (2 * n + nValues) + 4 * (records + 1)
                    + 4 * (2 * n) + 4 * (2 * (n + 1)) + eventIdBytes + idBytes;
            ByteBuffer out = ByteBuffer.allocate(total).order(ByteOrder.LITTLE_ENDIAN);
            out.put(MAGIC).putInt(size).put(framed, 0, size);
            out.position(8 + rawPadded);
            out.putInt(records).putInt(n).putInt(ids.size()).putInt(nValues).putInt(eventIdBytes).putInt(0);
            out.asLongBuffer().put(ts, 0, n);
            out.position(out.position() + 8 * n);
            out.asDoubleBuffer().put(label, 0, n);
            out.position(out.position() + 8 * n);
            out.asDoubleBuffer().put(features, 0, nValues);
            out.position(out.position() + 8 * nValues);
            putInts(out, recordStarts, records + 1);
            putInts(out, recordIndex, n);
            putInts(out, modelIdIndex, n);
            putInts(out, featureStarts, n + 1);
            putInts(out, eventIdStarts, n + 1);
            out.put(eventIds, 0, eventIdBytes);
            for (byte[] id : ids) {
                out.putInt(id.length).put(id);
            }
            return out.array();
        }

        private static void putInts(ByteBuffer out, int[] values, int count) {
            out.asIntBuffer().put(values, 0, count);
            out.position(out.position() + 4 * count);
        }
    }

    /**
     * Reads one JSON sample record, or says it cannot be sure of it ({@link #decode} false).
     * Strict RFC 8259 syntax; anything it does not take is left to Python, never guessed.
     */
    static final class SampleJson {
        private static final int MAX_DEPTH = 64;
        private static final long TS_LIMIT = 1L << 62;
        /** Exact powers of ten: a decimal with at most 15 significant digits and one of
         * these as its scale is correctly rounded by one multiplication or division. */
        private static final double[] POWERS = {
            1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14,
            1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22
        };

        byte[] bytes;
        private int pos;
        private int end;

        String modelId;
        long ts;
        /** The label: NaN when the record has none ({@link #hasLabel}). */
        double label;
        boolean hasLabel;
        double[] features = new double[64];
        int nFeatures;
        int eventIdStart;
        int eventIdEnd;

        /** The last number read: its value, and whether it was an integer literal. */
        private double number;
        private boolean integer;
        private long integerValue;

        boolean decode(byte[] source, int from, int to) {
            bytes = source;
            pos = from;
            end = to;
            modelId = null;
            nFeatures = -1;
            eventIdStart = eventIdEnd = 0;
            boolean hasTs = false;
            hasLabel = false;
            label = Double.NaN;
            boolean hasEventId = false;
            skipSpace();
            if (!take('{')) {
                return false;
            }
            skipSpace();
            if (peek() == '}') {
                return false;
            }
            while (true) {
                int keyStart = pos + 1;
                if (!plainString()) {
                    return false;
                }
                int keyEnd = pos - 1;
                skipSpace();
                if (!take(':')) {
                    return false;
                }
                skipSpace();
                if (is(keyStart, keyEnd, "model_id")) {
                    int start = pos + 1;
                    if (modelId != null || !plainString()) {
                        return false;
                    }
                    modelId = new String(bytes, start, pos - 1 - start, StandardCharsets.US_ASCII);
                } else if (is(keyStart, keyEnd, "ts")) {
                    if (hasTs || !number() || !integer || integerValue < 0 || integerValue >= TS_LIMIT) {
                        return false;
                    }
                    ts = integerValue;
                    hasTs = true;
                } else if (is(keyStart, keyEnd, "label")) {
                    if (hasLabel || !finiteNumber()) {
                        return false;
                    }
                    label = number;
                    hasLabel = true;
                } else if (is(keyStart, keyEnd, "features")) {
                    if (nFeatures >= 0 || !featureList()) {
                        return false;
                    }
                } else if (is(keyStart, keyEnd, "event_id")) {
                    if (hasEventId) {
                        return false;
                    }
                    hasEventId = true;
                    if (!literal("null")) {
                        eventIdStart = pos + 1;
                        if (!plainString()) {
                            return false;
                        }
                        eventIdEnd = pos - 1;
                        if (eventIdEnd == eventIdStart) {
                            return false; // "" is Python's to refuse
                        }
                    }
                } else if (!skipValue(0)) {
                    return false;
                }
                skipSpace();
                if (take(',')) {
                    skipSpace();
                    continue;
                }
                if (!take('}')) {
                    return false;
                }
                break;
            }
            skipSpace();
            return pos == end && modelId != null && hasTs;
        }

        private boolean featureList() {
            if (!take('[')) {
                return false;
            }
            nFeatures = 0;
            skipSpace();
            if (take(']')) {
                return true;
            }
            while (true) {
                if (!finiteNumber()) {
                    return false;
                }
                if (nFeatures == features.length) {
                    features = Arrays.copyOf(features, 2 * nFeatures);
                }
                features[nFeatures++] = number;
                skipSpace();
                if (take(']')) {
                    return true;
                }
                if (!take(',')) {
                    return false;
                }
                skipSpace();
            }
        }

        private boolean finiteNumber() {
            return number() && !Double.isInfinite(number) && !Double.isNaN(number);
        }

        /** A JSON number: sets {@link #number} (and {@link #integerValue} for an integer
         * literal of at most 18 digits); false on anything else, or on a literal whose
         * float64 it does not compute (left to Python). */
        private boolean number() {
            int start = pos;
            boolean negative = take('-');
            int digitsStart = pos;
            if (take('0')) {
                if (pos < end && isDigit(bytes[pos])) {
                    return false;
                }
            } else if (!digits()) {
                return false;
            }
            int intDigits = pos - digitsStart;
            int fracStart = -1;
            int fracEnd = -1;
            if (take('.')) {
                fracStart = pos;
                if (!digits()) {
                    return false;
                }
                fracEnd = pos;
            }
            boolean hasExponent = false;
            if (pos < end && (bytes[pos] == 'e' || bytes[pos] == 'E')) {
                pos++;
                if (pos < end && (bytes[pos] == '+' || bytes[pos] == '-')) {
                    pos++;
                }
                if (!digits()) {
                    return false;
                }
                hasExponent = true;
            }
            integer = fracStart < 0 && !hasExponent;
            if (integer) {
                if (intDigits > 18) {
                    return false;
                }
                long value = 0;
                for (int i = digitsStart; i < pos; i++) {
                    value = value * 10 + (bytes[i] - '0');
                }
                integerValue = negative ? -value : value;
                // Python makes an int of it, then the nearest float64; so does the cast.
                number = (double) integerValue;
                return true;
            }
            number = decimal(start, negative, digitsStart, intDigits, fracStart, fracEnd, hasExponent);
            return true;
        }

        private double decimal(int start, boolean negative, int digitsStart, int intDigits,
                int fracStart, int fracEnd, boolean hasExponent) {
            if (!hasExponent && intDigits + (fracEnd - fracStart) <= 15) {
                // Clinger's fast path: both operands exact, one correctly rounded division.
                long mantissa = 0;
                for (int i = digitsStart; i < digitsStart + intDigits; i++) {
                    mantissa = mantissa * 10 + (bytes[i] - '0');
                }
                for (int i = fracStart; i < fracEnd; i++) {
                    mantissa = mantissa * 10 + (bytes[i] - '0');
                }
                double value = mantissa / POWERS[fracEnd - fracStart];
                return negative ? -value : value;
            }
            return Double.parseDouble(new String(bytes, start, pos - start, StandardCharsets.US_ASCII));
        }

        private boolean digits() {
            int start = pos;
            while (pos < end && isDigit(bytes[pos])) {
                pos++;
            }
            return pos > start;
        }

        private static boolean isDigit(byte b) {
            return b >= '0' && b <= '9';
        }

        /** A string of printable ASCII without escapes (the position then just past it). */
        private boolean plainString() {
            return string(false);
        }

        /** Any well-formed JSON value of printable ASCII (escapes allowed, but not NaN or
         * Infinity, which only Python's json takes), nested at most 64 deep. */
        private boolean skipValue(int depth) {
            if (depth > MAX_DEPTH || pos >= end) {
                return false;
            }
            byte b = bytes[pos];
            if (b == '"') {
                return skipString();
            }
            if (b == '{' || b == '[') {
                char close = b == '{' ? '}' : ']';
                pos++;
                skipSpace();
                if (take(close)) {
                    return true;
                }
                while (true) {
                    if (b == '{') {
                        if (!skipString()) {
                            return false;
                        }
                        skipSpace();
                        if (!take(':')) {
                            return false;
                        }
                        skipSpace();
                    }
                    if (!skipValue(depth + 1)) {
                        return false;
                    }
                    skipSpace();
                    if (take(close)) {
                        return true;
                    }
                    if (!take(',')) {
                        return false;
                    }
                    skipSpace();
                }
            }
            if (b == '-' || isDigit(b)) {
                return number();
            }
            return literal("true") || literal("false") || literal("null");
        }

        private boolean skipString() {
            return string(true);
        }

        /** A string of printable ASCII, with JSON's escapes where {@code escapes} allows. */
        private boolean string(boolean escapes) {
            if (!take('"')) {
                return false;
            }
            while (pos < end) {
                byte b = bytes[pos++];
                if (b == '"') {
                    return true;
                }
                if (b < 0x20 || b > 0x7E) {
                    return false;
                }
                if (b == '\\') {
                    if (!escapes || pos >= end) {
                        return false;
                    }
                    byte e = bytes[pos++];
                    if (e == 'u') {
                        for (int i = 0; i < 4; i++) {
                            if (pos >= end || Character.digit(bytes[pos++], 16) < 0) {
                                return false;
                            }
                        }
                    } else if ("\"\\/bfnrt".indexOf(e) < 0) {
                        return false;
                    }
                }
            }
            return false;
        }

        private boolean literal(String word) {
            int n = word.length();
            if (pos + n > end) {
                return false;
            }
            for (int i = 0; i < n; i++) {
                if (bytes[pos + i] != word.charAt(i)) {
                    return false;
                }
            }
            pos += n;
            return true;
        }

        private boolean is(int from, int to, String key) {
            int n = key.length();
            if (to - from != n) {
                return false;
            }
            for (int i = 0; i < n; i++) {
                if (bytes[from + i] != key.charAt(i)) {
                    return false;
                }
            }
            return true;
        }

        private void skipSpace() {
            while (pos < end) {
                byte b = bytes[pos];
                if (b != ' ' && b != '\t' && b != '\n' && b != '\r') {
                    return;
                }
                pos++;
            }
        }

        private int peek() {
            return pos < end ? bytes[pos] : -1;
        }

        private boolean take(char c) {
            if (pos < end && bytes[pos] == c) {
                pos++;
                return true;
            }
            return false;
        }
    }
}
