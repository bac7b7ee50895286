package qupath.ext.segtme.client;

import java.util.ArrayList;
import java.util.Collection;
import java.util.Collections;
import java.util.IdentityHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Objects;
import java.util.Set;
import java.util.UUID;

/**
 * Applies a {@link TargetRule} to an object tree without knowing QuPath's classes: the QuPath layer passes a
 * {@link Tree} view of its {@code PathObjectHierarchy}. Pure functions; objects are compared by identity.
 */
public final class TargetSelector {

    private TargetSelector() {}

    /** What the selector needs to know about an object. */
    public interface Tree<T> {
        /** The parent object, or null when the parent is the image (the hierarchy's root). */
        T parent(T object);

        /** True for an annotation with an area ROI. */
        boolean isAreaAnnotation(T object);

        /** The object's ID (QuPath's UUID). */
        UUID id(T object);

        /** Classification name, or null if unclassified. */
        String className(T object);
    }

    /** True if the object may be analysed at all: an area annotation not made by SegTME. */
    public static <T> boolean isCandidate(T o, Tree<T> tree) {
        return o != null && tree.isAreaAnnotation(o) && !SegTMEIds.isSegTME(tree.id(o));
    }

    /**
     * The annotations a run analyses, in the order of {@code annotations}.
     *
     * @param annotations every annotation of the image (any order; non-candidates are ignored)
     * @param selected    the objects for {@link TargetRule.Scope#SELECTED} (ignored by the other scopes)
     */
    public static <T> List<T> select(Collection<? extends T> annotations, Collection<? extends T> selected,
                                     TargetRule rule, Tree<T> tree) {
        Objects.requireNonNull(rule, "rule");
        Collection<? extends T> pool = rule.scope() == TargetRule.Scope.SELECTED ? selected : annotations;
        Set<T> base = Collections.newSetFromMap(new IdentityHashMap<>());
        List<T> ordered = new ArrayList<>();
        for (T o : pool == null ? List.<T>of() : pool) {
            if (!isCandidate(o, tree) || base.contains(o))
                continue;
            boolean in = switch (rule.scope()) {
                case SELECTED, ALL -> true;
                case TOP_LEVEL -> tree.parent(o) == null;
                case CLASS -> rule.className().equals(tree.className(o));
            };
            if (in) {
                base.add(o);
                ordered.add(o);
            }
        }
        List<T> out = new ArrayList<>(ordered.size());
        for (T o : ordered)
            if (!hasAncestorIn(o, base, tree))
                out.add(o);
        return out;
    }

    private static <T> boolean hasAncestorIn(T o, Set<T> set, Tree<T> tree) {
        Set<T> seen = Collections.newSetFromMap(new IdentityHashMap<>());
        for (T p = tree.parent(o); p != null && seen.add(p); p = tree.parent(p))
            if (set.contains(p))
                return true;
        return false;
    }

    /**
     * The rule a workflow step records for a run on {@code targets} (what {@link #select} chose from the user's
     * selection). The recorded step must not depend on the selection (it is not saved with an image), so this is
     * the first of {@code all}, {@code top-level}, {@code class:C} that chooses exactly {@code targets} on this
     * image ({@code exact = true}); if none does, {@code class:C} when all targets share class C, else {@code all}
     * ({@code exact = false}: replaying on this image would analyse more annotations than the user selected).
     * The recorded {@code ifNone} is {@code skip}.
     */
    public static <T> Recorded recordable(Collection<? extends T> annotations, List<? extends T> targets, Tree<T> tree) {
        Set<T> want = Collections.newSetFromMap(new IdentityHashMap<>());
        want.addAll(targets);
        List<TargetRule> tries = new ArrayList<>(List.of(TargetRule.of(TargetRule.Scope.ALL), TargetRule.of(TargetRule.Scope.TOP_LEVEL)));
        Set<String> classes = new LinkedHashSet<>();
        for (T t : targets)
            classes.add(tree.className(t));
        String shared = classes.size() == 1 ? classes.iterator().next() : null;
        if (shared != null)
            tries.add(TargetRule.ofClass(shared));
        for (TargetRule r : tries) {
            List<T> got = select(annotations, List.of(), r, tree);
            if (got.size() == want.size() && want.containsAll(identitySet(got)))
                return new Recorded(r.withIfNone(TargetRule.IfNone.SKIP), true);
        }
        TargetRule fallback = shared != null ? TargetRule.ofClass(shared) : TargetRule.of(TargetRule.Scope.ALL);
        return new Recorded(fallback.withIfNone(TargetRule.IfNone.SKIP), false);
    }

    private static <T> Set<T> identitySet(Collection<T> c) {
        Set<T> s = Collections.newSetFromMap(new IdentityHashMap<>());
        s.addAll(c);
        return s;
    }

    /**
     * A recorded rule.
     *
     * @param rule  selection-free rule for the workflow step
     * @param exact true if it chooses exactly the annotations of the run on the image it was recorded on
     */
    public record Recorded(TargetRule rule, boolean exact) {}
}
