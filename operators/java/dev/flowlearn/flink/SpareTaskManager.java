package dev.flowlearn.flink;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;

import org.apache.flink.runtime.rpc.RpcSystem;
import org.apache.flink.runtime.taskexecutor.TaskManagerRunner;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * A TaskManager JVM started ahead of need: the local stack's supervisor
 * ({@code flowlearn.devstack.supervise --spare}) runs it with the live TaskManager's own
 * command line, this class in place of {@link TaskManagerRunner}. It starts, runs the Java
 * agent's warm-up ({@link PythonRunnerWarmup}), loads the TaskManager's entry classes and its
 * RPC system ({@link WarmRpcSystem}), and waits. When the live TaskManager dies the
 * supervisor writes {@code start} on its standard input and it runs {@link
 * TaskManagerRunner#main} with the same arguments: the replacement does not pay the JVM's
 * start and the warm-ups while the job waits for it.
 *
 * <p>The end of its standard input (the supervisor gone or stopping it) ends it, as does
 * any other line.
 */
public final class SpareTaskManager {

    /** What the supervisor writes to make the spare the TaskManager. */
    public static final String START = "start";

    private static final Logger LOG = LoggerFactory.getLogger(SpareTaskManager.class);

    private SpareTaskManager() {}

    public static void main(String[] args) throws Exception {
        // Loaded (and linked) now rather than when the job is waiting.
        Class.forName(TaskManagerRunner.class.getName(), true, SpareTaskManager.class.getClassLoader());
        RpcSystem rpcSystem = warmRpcSystem(args);
        String line;
        try (BufferedReader in =
                new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8))) {
            line = in.readLine();
        } catch (IOException e) {
            line = null;
        }
        if (!START.equals(line)) {
            if (rpcSystem != null) {
                rpcSystem.close(); // deletes the RPC system's jar copy in the temporary folder
            }
            System.exit(0);
        }
        if (rpcSystem != null) {
            WarmRpcSystem.offer(rpcSystem);
        }
        TaskManagerRunner.main(args);
    }

    /** The TaskManager's RPC system, run once; null if that failed (the TaskManager then loads its own). */
    private static RpcSystem warmRpcSystem(String[] args) {
        long started = System.nanoTime();
        try {
            RpcSystem system = WarmRpcSystem.warmUp(TaskManagerRunner.loadConfiguration(args));
            LOG.info("Spare TaskManager: RPC system warmed up in {} ms", (System.nanoTime() - started) / 1_000_000);
            return system;
        } catch (Exception | LinkageError e) {
            LOG.warn("Spare TaskManager: RPC system warm-up failed (the TaskManager loads its own)", e);
            return null;
        }
    }
}
