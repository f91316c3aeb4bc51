package dev.flowlearn.flink;

import java.nio.charset.StandardCharsets;

import org.apache.flink.api.common.serialization.SerializationSchema;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;

/**
 * The Kafka key of a JSON record the job writes ({@code fl.control}, {@code fl.alerts}): its
 * {@code model_id}, so that one model's records land in one partition and keep their order
 * (a control command the job sends after a user's, for instance). A record without a string
 * {@code model_id} gets no key: it is still written, to a partition Kafka picks.
 */
public final class ModelIdKey implements SerializationSchema<String> {

    private static final long serialVersionUID = 1L;

    private transient ObjectMapper mapper;

    @Override
    public void open(InitializationContext context) {
        mapper = new ObjectMapper();
    }

    @Override
    public byte[] serialize(String element) {
        if (mapper == null) {
            mapper = new ObjectMapper();
        }
        try {
            JsonNode modelId = mapper.readTree(element).get("model_id");
            return modelId != null && modelId.isTextual()
                    ? modelId.asText().getBytes(StandardCharsets.UTF_8)
                    : null;
        } catch (java.io.IOException e) {
            return null;
        }
    }
}
