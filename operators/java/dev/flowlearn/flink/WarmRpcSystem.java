package dev.flowlearn.flink;

import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;

import org.apache.flink.configuration.Configuration;
import org.apache.flink.runtime.rpc.RpcService;
import org.apache.flink.runtime.rpc.RpcSystem;
import org.apache.flink.runtime.rpc.RpcSystemLoader;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Flink's RPC system, loaded and run once by a spare TaskManager while it waits
 * ({@link SpareTaskManager}), handed to the TaskManager it becomes.
 *
 * <p>A TaskManager's first RPC service is the slowest step of its start: Flink loads its Pekko
 * RPC system into a class loader of its own and starts an actor system in it, over a second
 * of class loading and cold code on a small machine, while the job waits for the
 * TaskManager's slots. The spare does that work ahead ({@link #warmUp}): it loads the RPC
 * system, starts a service on an ephemeral loopback port and stops it. When the spare
 * becomes the TaskManager, Flink asks its {@link RpcSystemLoader}s for an RPC system; this
 * one (listed in {@code META-INF/services}, ahead of Flink's own by its priority) hands over
 * the warm one, whose services then start in a fraction of the time.
 *
 * <p>Anywhere else (a TaskManager that was not a spare, the JobManager, a client with this
 * jar on its classpath) there is no warm RPC system: this loader declines and Flink's own
 * loader loads one as it always does.
 */
public final class WarmRpcSystem implements RpcSystemLoader {

    /** Ahead of Flink's own loader (priority 0): the lowest value is asked first. */
    static final int LOAD_PRIORITY = -1;

    private static final Logger LOG = LoggerFactory.getLogger(WarmRpcSystem.class);

    private static final AtomicReference<RpcSystem> WARM = new AtomicReference<>();

    /**
     * Loads the RPC system as the TaskManager would and runs a service of it once; the
     * system is returned for {@link #offer}, or to close when the spare is not needed.
     */
    static RpcSystem warmUp(Configuration configuration) throws Exception {
        RpcSystem system = RpcSystem.load(configuration);
        try {
            RpcService service =
                    system.remoteServiceBuilder(configuration, "127.0.0.1", "0")
                            .withBindAddress("127.0.0.1")
                            .createAndStart();
            service.closeAsync().get(60, TimeUnit.SECONDS);
            return system;
        } catch (Exception e) {
            system.close();
            throw e;
        }
    }

    /** Makes {@code system} the one the next {@link RpcSystem#load} in this JVM returns. */
    static void offer(RpcSystem system) {
        WARM.set(system);
    }

    @Override
    public int getLoadPriority() {
        return LOAD_PRIORITY;
    }

    @Override
    public RpcSystem loadRpcSystem(Configuration configuration) {
        RpcSystem warm = WARM.getAndSet(null);
        if (warm == null) {
            throw new IllegalStateException("no warm RPC system in this JVM: Flink's own loader loads one");
        }
        LOG.info("Using the RPC system this JVM warmed up while it was a spare");
        return warm;
    }
}
