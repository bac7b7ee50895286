package qupath.ext.segtme.client;

import java.util.Locale;
import java.util.Objects;

/**
 * Which annotations one Detect TME run analyses (docs/qupath.md, "Which annotations are analysed").
 * Candidates are the <b>area annotations that SegTME did not make</b> (objects whose ID is a {@link SegTMEIds}
 * ID — PAGET tissue annotations, the CLI's report annotation — are never targets). Then:
 * <ul>
 * <li>{@code selected}: the candidates among the given objects (the GUI's selection, or objects a script passes);</li>
 * <li>{@code all}: every candidate of the image;</li>
 * <li>{@code top-level}: the candidates directly below the image (the hierarchy's root);</li>
 * <li>{@code class:NAME}: the candidates classified NAME.</li>
 * </ul>
 * <b>Nesting</b>: a candidate that lies (at any depth, by QuPath's hierarchy) inside another candidate chosen by
 * the same rule is not analysed on its own: the outer annotation's job covers its region, so no region is
 * analysed twice in one run and every nucleus is assigned once (to the outer annotation).
 * {@link #ifNone} says what happens when the rule yields nothing: {@code error}, {@code skip} (the image is left
 * alone; used by recorded workflow steps so "Run for project" passes over images without annotations) or
 * {@code whole-image} (one rectangle annotation covering the image is created and analysed).
 *
 * @param scope     the rule
 * @param className the class for {@link Scope#CLASS}, else null
 * @param ifNone    what to do when no annotation is chosen
 */
public record TargetRule(Scope scope, String className, IfNone ifNone) {

    /** The rule's scope. */
    public enum Scope { SELECTED, ALL, TOP_LEVEL, CLASS }

    /** What a run does when the rule chooses no annotation. */
    public enum IfNone {
        ERROR("error"), SKIP("skip"), WHOLE_IMAGE("whole-image");

        private final String text;

        IfNone(String text) {
            this.text = text;
        }

        public String text() {
            return text;
        }

        public static IfNone parse(String s) {
            String v = s == null ? "" : s.strip().toLowerCase(Locale.ROOT);
            for (IfNone n : values())
                if (n.text.equals(v))
                    return n;
            throw new IllegalArgumentException("ifNone must be 'error', 'skip' or 'whole-image', got '" + s + "'");
        }
    }

    public TargetRule {
        Objects.requireNonNull(scope, "scope");
        Objects.requireNonNull(ifNone, "ifNone");
        if (scope == Scope.CLASS && (className == null || className.isBlank()))
            throw new IllegalArgumentException("targets 'class:' needs a class name, e.g. 'class:Tumor'");
        if (scope != Scope.CLASS)
            className = null;
    }

    public static TargetRule of(Scope scope) {
        return new TargetRule(scope, null, IfNone.ERROR);
    }

    public static TargetRule ofClass(String name) {
        return new TargetRule(Scope.CLASS, name == null ? null : name.strip(), IfNone.ERROR);
    }

    public TargetRule withIfNone(IfNone n) {
        return new TargetRule(scope, className, n);
    }

    /** Parse the script value: "selected", "all", "top-level" or "class:NAME" (ifNone = error). */
    public static TargetRule parse(String s) {
        String v = s == null ? "" : s.strip();
        String lower = v.toLowerCase(Locale.ROOT);
        if (lower.startsWith("class:"))
            return ofClass(v.substring("class:".length()));
        return switch (lower) {
            case "selected" -> of(Scope.SELECTED);
            case "all" -> of(Scope.ALL);
            case "top-level", "toplevel", "top_level" -> of(Scope.TOP_LEVEL);
            default -> throw new IllegalArgumentException(
                    "targets must be 'selected', 'all', 'top-level' or 'class:NAME', got '" + s + "'");
        };
    }

    /** The script value ({@link #parse} reads it back). */
    public String text() {
        return switch (scope) {
            case SELECTED -> "selected";
            case ALL -> "all";
            case TOP_LEVEL -> "top-level";
            case CLASS -> "class:" + className;
        };
    }
}
