package qupath.ext.segtme.client;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/**
 * The Groovy text of the workflow step a run records (QuPath's <i>Workflow</i> tab, <i>Create script</i>,
 * <i>Run for project</i>). It never names objects of one image: the targets are a {@link TargetRule}, so the
 * step replays on every image of a project with no selection.
 */
public final class WorkflowScript {

    public static final String ENTRY = "qupath.ext.segtme.SegTME.detectTME";
    public static final String STEP_NAME = "SegTME: Detect TME";

    private WorkflowScript() {}

    /**
     * The step's script.
     *
     * @param settings what the run used ({@link RunSettings#toRecordedMap()}: no token)
     * @param exact    false adds a comment that the rule analyses more annotations than were selected
     */
    public static String script(RunSettings settings, boolean exact) {
        String call = ENTRY + "(getCurrentImageData(), " + groovyMap(settings.toRecordedMap()) + ")";
        if (exact)
            return call;
        return "// recorded from a selection that no rule reproduces; on replay targets '" + settings.targets().text()
                + "' applies\n" + call;
    }

    /** The step's name; a run that stopped early says how far it got. */
    public static String stepName(int done, int total) {
        return done >= total ? STEP_NAME : STEP_NAME + " (stopped after " + done + " of " + total + " annotations)";
    }

    /** A Groovy map literal; strings single-quoted and escaped, numbers and booleans as they are. */
    public static String groovyMap(Map<String, Object> m) {
        List<String> parts = new ArrayList<>();
        m.forEach((k, v) -> parts.add(k + ": " + literal(v)));
        return "[" + String.join(", ", parts) + "]";
    }

    static String literal(Object v) {
        if (v instanceof Number || v instanceof Boolean)
            return String.valueOf(v);
        String s = String.valueOf(v);
        StringBuilder sb = new StringBuilder("'");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '\\' -> sb.append("\\\\");
                case '\'' -> sb.append("\\'");
                case '\n' -> sb.append("\\n");
                case '\r' -> sb.append("\\r");
                case '$' -> sb.append("\\$"); // harmless in single quotes, but keeps the text safe if re-quoted
                default -> sb.append(c);
            }
        }
        return sb.append('\'').toString();
    }
}
