package qupath.ext.segtme.client;

import org.junit.jupiter.api.Test;

import java.util.LinkedHashMap;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.*;

class WorkflowScriptTest {

    static RunSettings settings(Map<String, Object> m) {
        return RunSettings.fromMap(m, TargetRule.Scope.SELECTED, k -> null);
    }

    @Test
    void stepCallsTheMapOnlyEntryPointWithARule() {
        RunSettings s = settings(Map.of("model", "default", "tileSize", 256)).withTargets(TargetRule.of(TargetRule.Scope.ALL)
                .withIfNone(TargetRule.IfNone.SKIP));
        String script = WorkflowScript.script(s, true);
        assertEquals("qupath.ext.segtme.SegTME.detectTME(getCurrentImageData(), [server: 'localhost:50051', tls: false, "
                + "model: 'default', tileSize: 256, overlap: -1, output: 'detections', narrative: true, targets: 'all', "
                + "ifNone: 'skip'])", script);
        assertFalse(script.contains("getSelectedObjects"), "the selection is not saved with an image");
        assertFalse(script.contains("getAnnotationObjects"), "the target rule, not a list of objects");
    }

    @Test
    void cellsPlaneAndCaFileAreRecordedWhenUsed() {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("output", "cells");
        m.put("cellExpansion", 3.5);
        m.put("z", 2);
        m.put("t", 1);
        m.put("targets", "class:Tumor");
        String script = WorkflowScript.script(settings(m), true);
        assertTrue(script.contains("output: 'cells', cellExpansion: 3.5"), script);
        assertTrue(script.contains("targets: 'class:Tumor', ifNone: 'error', z: 2, t: 1])"), script);
        assertFalse(WorkflowScript.script(settings(Map.of()), true).contains("cellExpansion"));
    }

    @Test
    void inexactRuleIsCommented() {
        String script = WorkflowScript.script(settings(Map.of("targets", "all")), false);
        assertTrue(script.startsWith("// recorded from a selection that no rule reproduces; on replay targets 'all' applies\n"), script);
        assertEquals(2, script.split("\n").length);
    }

    @Test
    void stringsAreQuotedSafely() {
        assertEquals("'it\\'s'", WorkflowScript.literal("it's"));
        assertEquals("'C:\\\\certs\\\\ca.pem'", WorkflowScript.literal("C:\\certs\\ca.pem"));
        assertEquals("'a\\nb'", WorkflowScript.literal("a\nb"));
        assertEquals("'\\${x}'", WorkflowScript.literal("${x}"));
        assertEquals("5", WorkflowScript.literal(5));
        assertEquals("true", WorkflowScript.literal(true));
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("a", "x");
        m.put("b", 2);
        assertEquals("[a: 'x', b: 2]", WorkflowScript.groovyMap(m));
    }

    @Test
    void stepNameSaysWhenARunStoppedEarly() {
        assertEquals("SegTME: Detect TME", WorkflowScript.stepName(3, 3));
        assertEquals("SegTME: Detect TME (stopped after 1 of 3 annotations)", WorkflowScript.stepName(1, 3));
    }
}
