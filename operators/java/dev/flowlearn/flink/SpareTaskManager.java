package dev.flowlearn.flink;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;

import org.apache.flink.runtime.taskexecutor.TaskManagerRunner;

/**
 * A TaskManager JVM started ahead of need: the local stack's supervisor
 * ({@code flowlearn.devstack.supervise --spare}) runs it with the live TaskManager's own
 * command line, this class in place of {@link TaskManagerRunner}. It starts, runs the Java
 * agent's warm-up ({@link PythonRunnerWarmup}), loads the TaskManager's entry classes, and
 * waits. When the live TaskManager dies the supervisor writes {@code start} on its standard
 * input and it runs {@link TaskManagerRunner#main} with the same arguments: the replacement
 * does not pay the JVM's start and the warm-up while the job waits for it.
 *
 * <p>The end of its standard input (the supervisor gone or stopping it) ends it, as does
 * any other line.
 */
public final class SpareTaskManager {

    /** What the supervisor writes to make the spare the TaskManager. */
    public static final String START = "start";

    private SpareTaskManager() {}

    public static void main(String[] args) throws Exception {
        // Loaded (and linked) now rather than when the job is waiting.
        Class.forName(TaskManagerRunner.class.getName(), true, SpareTaskManager.class.getClassLoader());
        String line;
        try (BufferedReader in =
                new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8))) {
            line = in.readLine();
        } catch (IOException e) {
            line = null;
        }
        if (!START.equals(line)) {
            System.exit(0);
        }
        TaskManagerRunner.main(args);
    }
}
