package qupath.ext.segtme.client;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.function.Function;

import static org.junit.jupiter.api.Assertions.*;

class RunSettingsTest {

    static final Function<String, String> NO_ENV = k -> null;
    static Function<String, String> env(String token) {
        return k -> RunSettings.ENV_TOKEN.equals(k) ? token : null;
    }

    @Test
    void defaults() {
        RunSettings s = RunSettings.fromMap(Map.of(), TargetRule.Scope.ALL, NO_ENV);
        assertEquals("localhost:50051", s.server());
        assertNull(s.token());
        assertFalse(s.tls());
        assertNull(s.caFile());
        assertEquals("", s.model());
        assertEquals(0, s.tileSize());
        assertEquals(-1, s.overlap());
        assertFalse(s.cells());
        assertEquals(5.0, s.cellExpansion());
        assertTrue(s.narrative());
        assertEquals("all", s.targets().text());
        assertEquals(TargetRule.IfNone.ERROR, s.targets().ifNone());
        assertEquals(0, s.z());
        assertEquals(0, s.t());
        assertEquals("selected", RunSettings.fromMap(null, TargetRule.Scope.SELECTED, NO_ENV).targets().text());
    }

    @Test
    void tokenFromTheMapElseFromSegtmeToken() {
        assertEquals("from-env", RunSettings.fromMap(Map.of(), TargetRule.Scope.ALL, env("from-env")).token());
        assertEquals("explicit", RunSettings.fromMap(Map.of("token", "explicit"), TargetRule.Scope.ALL, env("from-env")).token());
        assertEquals("from-env", RunSettings.fromMap(Map.of("token", "  "), TargetRule.Scope.ALL, env(" from-env ")).token());
        assertNull(RunSettings.fromMap(Map.of(), TargetRule.Scope.ALL, env("")).token());
        assertEquals("pref", RunSettings.resolveToken(" pref ", env("from-env")), "the GUI's preference wins over the variable");
        assertEquals("from-env", RunSettings.resolveToken("", env("from-env")));
        assertNull(RunSettings.resolveToken(null, null));
        var cfg = RunSettings.fromMap(Map.of(), TargetRule.Scope.ALL, env("secret")).toClientConfig();
        assertEquals("secret", cfg.bearerToken(), "the token reaches the gRPC client");
    }

    @Test
    void theTokenIsNeverRecorded() {
        RunSettings s = RunSettings.fromMap(Map.of("token", "s3cret"), TargetRule.Scope.ALL, NO_ENV);
        assertFalse(s.toRecordedMap().containsKey("token"));
        assertFalse(WorkflowScript.script(s, true).contains("s3cret"));
    }

    @Test
    void tlsWithACaFile(@TempDir Path dir) throws Exception {
        Path pem = Files.writeString(dir.resolve("ca.pem"), "-----BEGIN CERTIFICATE-----\n");
        RunSettings s = RunSettings.fromMap(Map.of("caFile", pem.toString()), TargetRule.Scope.ALL, NO_ENV);
        assertTrue(s.tls(), "a CA file implies TLS");
        ClientConfig cfg = s.toClientConfig();
        assertTrue(cfg.tls());
        assertEquals(pem, cfg.trustCertificate());
        assertEquals(pem.toString(), s.toRecordedMap().get("caFile"));
        var missing = RunSettings.fromMap(Map.of("caFile", dir.resolve("nope.pem").toString()), TargetRule.Scope.ALL, NO_ENV);
        var e = assertThrows(IllegalArgumentException.class, missing::toClientConfig);
        assertTrue(e.getMessage().startsWith("TLS CA file not found or not readable: "), e.getMessage());
        assertTrue(RunSettings.fromMap(Map.of("tls", true), TargetRule.Scope.ALL, NO_ENV).toClientConfig().tls());
        assertTrue(RunSettings.fromMap(Map.of("tls", "true"), TargetRule.Scope.ALL, NO_ENV).tls(), "Groovy may pass strings");
    }

    @Test
    void everyKeyParsedAndValidated() {
        Map<String, Object> m = new HashMap<>();
        m.put("server", " gpu:6000 ");
        m.put("model", "paget_s");
        m.put("tileSize", 256);
        m.put("overlap", "32");
        m.put("output", "Cells");
        m.put("cellExpansion", 2.5);
        m.put("narrative", false);
        m.put("targets", "class:Tumor");
        m.put("ifNone", "skip");
        m.put("z", 2);
        m.put("t", 1);
        RunSettings s = RunSettings.fromMap(m, TargetRule.Scope.ALL, NO_ENV);
        assertEquals("gpu:6000", s.server());
        assertEquals("paget_s", s.model());
        assertEquals(256, s.tileSize());
        assertEquals(32, s.overlap());
        assertTrue(s.cells());
        assertEquals(2.5, s.cellExpansion());
        assertFalse(s.narrative());
        assertEquals("class:Tumor", s.targets().text());
        assertEquals(TargetRule.IfNone.SKIP, s.targets().ifNone());
        assertEquals(2, s.z());
        assertEquals(1, s.t());
        DetectOptions d = s.toDetectOptions();
        assertEquals(DetectOptions.Output.DETECTIONS, d.output(), "cells are made on the client from detections");
        assertEquals(256, d.tileSize());
        assertEquals("none", d.narrativeBackend());
        // recorded map reads back to the same settings
        RunSettings back = RunSettings.fromMap(s.toRecordedMap(), TargetRule.Scope.SELECTED, NO_ENV);
        assertEquals(s, back);
    }

    @Test
    void badValuesGiveOneLineErrors() {
        Map<String, String> bad = new LinkedHashMap<>();
        bad.put("output", "output must be 'detections' or 'cells'");
        bad.put("tileSize", "tileSize must be a whole number");
        bad.put("tls", "tls must be true or false");
        bad.put("cellExpansion", "cellExpansion must be a number");
        bad.put("targets", "targets must be");
        bad.put("ifNone", "ifNone must be");
        for (var e : bad.entrySet()) {
            var ex = assertThrows(IllegalArgumentException.class,
                    () -> RunSettings.fromMap(Map.of(e.getKey(), "xyz"), TargetRule.Scope.ALL, NO_ENV), e.getKey());
            assertTrue(ex.getMessage().startsWith(e.getValue()), ex.getMessage());
            assertFalse(ex.getMessage().contains("\n"));
        }
        assertThrows(IllegalArgumentException.class, () -> RunSettings.fromMap(Map.of("tileSize", -5), TargetRule.Scope.ALL, NO_ENV));
        assertThrows(IllegalArgumentException.class, () -> RunSettings.fromMap(Map.of("overlap", -2), TargetRule.Scope.ALL, NO_ENV));
        assertThrows(IllegalArgumentException.class, () -> RunSettings.fromMap(Map.of("cellExpansion", -1), TargetRule.Scope.ALL, NO_ENV));
        assertThrows(IllegalArgumentException.class, () -> RunSettings.fromMap(Map.of("z", -1), TargetRule.Scope.ALL, NO_ENV));
        assertThrows(IllegalArgumentException.class, () -> RunSettings.fromMap(Map.of("server", " "), TargetRule.Scope.ALL, NO_ENV));
        var typo = assertThrows(IllegalArgumentException.class, () -> RunSettings.fromMap(Map.of("tilesize", 256), TargetRule.Scope.ALL, NO_ENV));
        assertTrue(typo.getMessage().startsWith("unknown SegTME option 'tilesize'"), typo.getMessage());
    }
}
