package qupath.ext.segtme.client;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import static org.junit.jupiter.api.Assertions.fail;

/** A `segtme serve --port 0` subprocess: waits for its SEGTME_SERVER_LISTENING line, keeps its log, stops with SIGTERM. */
final class ServerProcess implements AutoCloseable {

    private static final Pattern LISTENING = Pattern.compile("^SEGTME_SERVER_LISTENING port=(\\d+)$");

    final Process process;
    final List<String> log = new CopyOnWriteArrayList<>();
    final int port;

    ServerProcess(List<String> command, long startupSeconds) throws Exception {
        ProcessBuilder pb = new ProcessBuilder(command);
        pb.environment().put("PYTHONUNBUFFERED", "1");
        process = pb.start();
        Thread err = new Thread(() -> drain(process.getErrorStream()), "segtme-server-stderr");
        err.setDaemon(true);
        err.start();
        port = awaitPort(startupSeconds);
    }

    private void drain(InputStream in) {
        try (var r = new BufferedReader(new InputStreamReader(in, StandardCharsets.UTF_8))) {
            String line;
            while ((line = r.readLine()) != null)
                log.add(line);
        } catch (IOException ignored) {
            // process ended
        }
    }

    private int awaitPort(long seconds) throws Exception {
        var out = new BufferedReader(new InputStreamReader(process.getInputStream(), StandardCharsets.UTF_8));
        var found = new CompletableFuture<Integer>();
        Thread t = new Thread(() -> {
            try {
                String line;
                while ((line = out.readLine()) != null) {
                    Matcher m = LISTENING.matcher(line.strip());
                    if (m.matches())
                        found.complete(Integer.parseInt(m.group(1)));
                }
                found.completeExceptionally(new IllegalStateException("server exited before listening"));
            } catch (IOException e) {
                found.completeExceptionally(e);
            }
        }, "segtme-server-stdout");
        t.setDaemon(true);
        t.start();
        try {
            return found.get(seconds, TimeUnit.SECONDS);
        } catch (Exception e) {
            close();
            fail("the server did not print SEGTME_SERVER_LISTENING: " + e + "\nserver log:\n" + String.join("\n", log));
            return -1;
        }
    }

    @Override
    public void close() throws InterruptedException {
        process.destroy();  // SIGTERM: the server drains and exits
        if (!process.waitFor(20, TimeUnit.SECONDS))
            process.destroyForcibly();
    }
}
