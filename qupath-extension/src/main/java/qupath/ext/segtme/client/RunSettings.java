package qupath.ext.segtme.client;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.function.Function;

/**
 * Everything one Detect TME run needs, from a script's option map or the GUI preferences.
 * Script keys (all optional; defaults in brackets):
 * <pre>
 * server [localhost:50051]  token [$SEGTME_TOKEN]  tls [false]  caFile [''] (PEM; implies tls)
 * model [''= server default]  tileSize [0 = model's, working px]  overlap [-1 = model's, working px]
 * output ['detections' | 'cells']  cellExpansion [5.0 µm, cells only]  narrative [true]
 * targets ['selected' | 'all' | 'top-level' | 'class:NAME'; 'all' for the map-only script call]
 * ifNone ['error' | 'skip' | 'whole-image']  z [0]  t [0]  (the image plane tiles are read from)
 * </pre>
 * Unknown keys are an error (a misspelt key would otherwise be ignored silently).
 *
 * @param token         bearer token or null; never recorded (see {@link #toRecordedMap()})
 * @param caFile        PEM file that signs the server's certificate, or null (then the JVM's trusted roots)
 * @param cellExpansion µm a nucleus is grown by to make a cell ({@code output: 'cells'})
 */
public record RunSettings(String server, String token, boolean tls, Path caFile, String model, int tileSize,
                          int overlap, DetectOptions.Output output, double cellExpansion, boolean narrative,
                          TargetRule targets, int z, int t) {

    public static final String ENV_TOKEN = "SEGTME_TOKEN";
    public static final String DEFAULT_SERVER = "localhost:50051";
    public static final double DEFAULT_CELL_EXPANSION_UM = 5.0;
    private static final Set<String> KEYS = Set.of("server", "token", "tls", "caFile", "model", "tileSize", "overlap",
            "output", "cellExpansion", "narrative", "targets", "ifNone", "z", "t");

    public RunSettings {
        if (server == null || server.isBlank())
            throw new IllegalArgumentException("server address is empty (expected host:port)");
        server = server.strip();
        token = token == null || token.isBlank() ? null : token.strip();
        model = model == null ? "" : model.strip();
        if (caFile != null)
            tls = true;
        if (tileSize < 0)
            throw new IllegalArgumentException("tileSize must be >= 0 (0 = the model's), got " + tileSize);
        if (overlap < -1)
            throw new IllegalArgumentException("overlap must be >= -1 (-1 = the model's), got " + overlap);
        if (!(cellExpansion >= 0) || Double.isInfinite(cellExpansion))
            throw new IllegalArgumentException("cellExpansion must be >= 0 µm, got " + cellExpansion);
        if (z < 0 || t < 0)
            throw new IllegalArgumentException("z and t must be >= 0, got z=" + z + ", t=" + t);
        if (output == null)
            output = DetectOptions.Output.DETECTIONS;
        if (targets == null)
            targets = TargetRule.of(TargetRule.Scope.SELECTED);
    }

    /** The token to use: an explicit one if not blank, else $SEGTME_TOKEN, else null. */
    public static String resolveToken(String explicit, Function<String, String> env) {
        if (explicit != null && !explicit.isBlank())
            return explicit.strip();
        String e = env == null ? null : env.apply(ENV_TOKEN);
        return e == null || e.isBlank() ? null : e.strip();
    }

    /** From a script's map; {@code defaultTargets} applies when the map has no "targets". */
    public static RunSettings fromMap(Map<String, ?> map, TargetRule.Scope defaultTargets, Function<String, String> env) {
        Map<String, ?> m = map == null ? Map.of() : map;
        for (String k : m.keySet())
            if (!KEYS.contains(k))
                throw new IllegalArgumentException("unknown SegTME option '" + k + "' (known: " + String.join(", ", new java.util.TreeSet<>(KEYS)) + ")");
        String out = str(m, "output", "detections").toLowerCase(Locale.ROOT);
        DetectOptions.Output output = switch (out) {
            case "detections" -> DetectOptions.Output.DETECTIONS;
            case "cells" -> DetectOptions.Output.CELLS;
            default -> throw new IllegalArgumentException("output must be 'detections' or 'cells', got '" + out + "'");
        };
        TargetRule rule = m.get("targets") == null ? TargetRule.of(defaultTargets) : TargetRule.parse(str(m, "targets", ""));
        rule = rule.withIfNone(TargetRule.IfNone.parse(str(m, "ifNone", "error")));
        String ca = str(m, "caFile", "");
        return new RunSettings(str(m, "server", DEFAULT_SERVER), resolveToken(str(m, "token", ""), env),
                bool(m, "tls", false), ca.isBlank() ? null : Path.of(ca), str(m, "model", ""),
                integer(m, "tileSize", 0), integer(m, "overlap", -1), output,
                number(m, "cellExpansion", DEFAULT_CELL_EXPANSION_UM), bool(m, "narrative", true), rule,
                integer(m, "z", 0), integer(m, "t", 0));
    }

    private static String str(Map<String, ?> m, String key, String dflt) {
        Object v = m.get(key);
        return v == null ? dflt : String.valueOf(v);
    }

    private static boolean bool(Map<String, ?> m, String key, boolean dflt) {
        Object v = m.get(key);
        if (v == null)
            return dflt;
        if (v instanceof Boolean b)
            return b;
        String s = String.valueOf(v).strip().toLowerCase(Locale.ROOT);
        if (s.equals("true") || s.equals("false"))
            return Boolean.parseBoolean(s);
        throw new IllegalArgumentException(key + " must be true or false, got '" + v + "'");
    }

    private static int integer(Map<String, ?> m, String key, int dflt) {
        Object v = m.get(key);
        if (v == null)
            return dflt;
        if (v instanceof Number n && n.doubleValue() == Math.rint(n.doubleValue()))
            return n.intValue();
        try {
            return Integer.parseInt(String.valueOf(v).strip());
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException(key + " must be a whole number, got '" + v + "'");
        }
    }

    private static double number(Map<String, ?> m, String key, double dflt) {
        Object v = m.get(key);
        if (v == null)
            return dflt;
        if (v instanceof Number n)
            return n.doubleValue();
        try {
            return Double.parseDouble(String.valueOf(v).strip());
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException(key + " must be a number, got '" + v + "'");
        }
    }

    public boolean cells() {
        return output == DetectOptions.Output.CELLS;
    }

    public RunSettings withTargets(TargetRule rule) {
        return new RunSettings(server, token, tls, caFile, model, tileSize, overlap, output, cellExpansion, narrative, rule, z, t);
    }

    public RunSettings withPlane(int z, int t) {
        return new RunSettings(server, token, tls, caFile, model, tileSize, overlap, output, cellExpansion, narrative, targets, z, t);
    }

    /** The options as a workflow step records them: never the token; defaults of z/t/caFile left out. */
    public Map<String, Object> toRecordedMap() {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("server", server);
        m.put("tls", tls);
        if (caFile != null)
            m.put("caFile", caFile.toString());
        m.put("model", model);
        m.put("tileSize", tileSize);
        m.put("overlap", overlap);
        m.put("output", cells() ? "cells" : "detections");
        if (cells())
            m.put("cellExpansion", cellExpansion);
        m.put("narrative", narrative);
        m.put("targets", targets.text());
        m.put("ifNone", targets.ifNone().text());
        if (z != 0)
            m.put("z", z);
        if (t != 0)
            m.put("t", t);
        return m;
    }

    /** How to reach the server; checks that a CA file exists before anything connects. */
    public ClientConfig toClientConfig() {
        if (caFile != null && !Files.isReadable(caFile))
            throw new IllegalArgumentException("TLS CA file not found or not readable: " + caFile);
        return ClientConfig.builder(server).tls(tls).trustCertificate(caFile).bearerToken(token).build();
    }

    /** The DetectTME job options. Cells are made on the client (QuPath's CellTools), so the job asks for detections. */
    public DetectOptions toDetectOptions() {
        return DetectOptions.builder().model(model).tileSize(tileSize).overlap(overlap).narrative(narrative)
                .output(DetectOptions.Output.DETECTIONS).build();
    }
}
