package dev.flowlearn.flink;

import java.lang.instrument.Instrumentation;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * A TaskManager's Java agent ({@code -javaagent:} this jar) that does, when the JVM starts, the
 * one-time work of the first Python operator the TaskManager opens: loading PyFlink's runner
 * and Beam's classes and building Beam's pipeline-options registry (a reflective pass over
 * every options interface, with a proxy class for each).
 *
 * <p>Without it that work falls in a recovery: a standby TaskManager, or the new one that
 * replaces a lost one, meets it when the job's tasks open, every slot's operators waiting on
 * the same class initialisation, seconds on a small machine. It needs {@code flink-python} on
 * the TaskManager's classpath (its {@code lib/}) and {@code org.apache.beam.} among the
 * parent-first class-loading patterns, so that the job's tasks use these classes rather than
 * load their own copies.
 *
 * <p>It runs on a daemon thread (the TaskManager does not wait for it) and logs how long it
 * took; a TaskManager without flink-python logs that there is nothing to warm up and works as
 * before.
 */
public final class PythonRunnerWarmup {

    private static final Logger LOG = LoggerFactory.getLogger(PythonRunnerWarmup.class);

    private PythonRunnerWarmup() {}

    public static void premain(String args, Instrumentation instrumentation) {
        Thread thread = new Thread(() -> warmUp(), "flowlearn-python-runner-warmup");
        thread.setDaemon(true);
        thread.start();
    }

    /**
     * The warm-up in the foreground, to check it against a Flink's jars: {@code java -cp
     * "lib/*:flink-python.jar:operators.jar" dev.flowlearn.flink.PythonRunnerWarmup} exits 0
     * when every step ran.
     */
    public static void main(String[] args) {
        System.exit(warmUp() ? 0 : 1);
    }

    /**
     * Runs, once, what {@code BeamPythonFunctionRunner.open} runs before it starts a worker;
     * false when a class is missing or a step failed (logged).
     */
    public static boolean warmUp() {
        long started = System.nanoTime();
        ClassLoader loader = ClassLoader.getSystemClassLoader();
        try {
            // Through reflection: this jar is compiled against Flink's lib/ alone, without
            // flink-python, and is also the job's jar, where these classes are never named.
            Class<?> factory = load(loader, "org.apache.beam.sdk.options.PipelineOptionsFactory");
            Class<?> portable = load(loader, "org.apache.beam.sdk.options.PortablePipelineOptions");
            Class<?> optionsType = load(loader, "org.apache.beam.sdk.options.PipelineOptions");
            Object options = factory.getMethod("as", Class.class).invoke(null, portable);
            Object proto =
                    load(loader, "org.apache.beam.runners.core.construction.PipelineOptionsTranslation")
                            .getMethod("toProto", optionsType)
                            .invoke(null, options);
            Class<?> jobInfo = load(loader, "org.apache.beam.runners.fnexecution.provisioning.JobInfo");
            Object info =
                    jobInfo.getMethod("create", String.class, String.class, String.class, proto.getClass())
                            .invoke(null, "warm-up", "warm-up", "", proto);
            Object bundles =
                    load(loader, "org.apache.beam.runners.fnexecution.control.DefaultJobBundleFactory")
                            .getMethod("create", jobInfo)
                            .invoke(null, info);
            ((AutoCloseable) bundles).close();
            load(loader, "org.apache.flink.python.metric.process.FlinkMetricContainer");
            load(loader, "org.apache.flink.streaming.api.runners.python.beam.BeamPythonFunctionRunner");
            LOG.info(
                    "PyFlink's runner classes loaded in {} ms, before any task needs them",
                    (System.nanoTime() - started) / 1_000_000);
            return true;
        } catch (ClassNotFoundException e) {
            LOG.info("No PyFlink runner warm-up: {} is not on the TaskManager's classpath", e.getMessage());
        } catch (Exception | LinkageError e) {
            LOG.warn("PyFlink runner warm-up failed (the first Python task does the work instead)", e);
        }
        return false;
    }

    private static Class<?> load(ClassLoader loader, String name) throws ClassNotFoundException {
        return Class.forName(name, true, loader);
    }
}
