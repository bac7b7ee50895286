package qupath.ext.segtme.client;

import org.junit.jupiter.api.Test;

import java.util.ArrayList;
import java.util.List;
import java.util.UUID;

import static org.junit.jupiter.api.Assertions.*;

class TargetSelectorTest {

    /** A stand-in object tree: parent null = below the image's root. */
    static final class Obj {
        final String name;
        Obj parent;
        boolean area = true;
        String cls;
        UUID id = UUID.randomUUID();

        Obj(String name, Obj parent, String cls) {
            this.name = name;
            this.parent = parent;
            this.cls = cls;
        }

        @Override
        public String toString() {
            return name;
        }
    }

    static final TargetSelector.Tree<Obj> TREE = new TargetSelector.Tree<>() {
        public Obj parent(Obj o) { return o.parent; }
        public boolean isAreaAnnotation(Obj o) { return o.area; }
        public UUID id(Obj o) { return o.id; }
        public String className(Obj o) { return o.cls; }
    };

    // image: tumour T (class Tumor) with nested margin M (class Margin) and a nested-nested spot S (Tumor);
    // stroma R (class Stroma) at top level; a PAGET tissue annotation E below T; a point annotation P; a user's
    // annotation U inside a TMA-like non-annotation container (parent X, not an annotation)
    final Obj T = new Obj("T", null, "Tumor");
    final Obj M = new Obj("M", T, "Margin");
    final Obj S = new Obj("S", M, "Tumor");
    final Obj R = new Obj("R", null, "Stroma");
    final Obj E = new Obj("E", T, "Epithelium");
    final Obj P = new Obj("P", null, null);
    final Obj X = new Obj("X", null, null);
    final Obj U = new Obj("U", X, null);
    final List<Obj> annotations;

    TargetSelectorTest() {
        E.id = SegTMEIds.objectId(T.id, SegTMEIds.Kind.TISSUE, 1, 0);
        P.area = false;
        annotations = List.of(S, M, T, R, E, P, U); // not in tree order on purpose
    }

    List<Obj> select(String rule, List<Obj> selected) {
        return TargetSelector.select(annotations, selected, TargetRule.parse(rule), TREE);
    }

    @Test
    void allTakesTheOutermostCandidatesOnly() {
        assertEquals(List.of(T, R, U), select("all", List.of()));
    }

    @Test
    void topLevelIsWhatSitsDirectlyBelowTheImage() {
        assertEquals(List.of(T, R), select("top-level", List.of()), "U sits inside a non-annotation container");
    }

    @Test
    void classRuleAppliesNestingAmongItsOwnMatches() {
        assertEquals(List.of(T), select("class:Tumor", List.of()), "S lies inside T: analysed through T");
        assertEquals(List.of(M), select("class:Margin", List.of()));
        assertEquals(List.of(), select("class:Necrosis", List.of()));
    }

    @Test
    void selectedDropsNestedOnesAndNonCandidates() {
        assertEquals(List.of(M, R), select("selected", List.of(M, S, R, P, E)), "S inside M; P is a point; E is SegTME's");
        assertEquals(List.of(S), select("selected", List.of(S)), "a nested annotation selected alone is analysed");
        assertEquals(List.of(T), select("selected", List.of(T, T)), "duplicates once");
    }

    @Test
    void pagetTissueAndReportAnnotationsAreNeverTargets() {
        Obj report = new Obj("report", null, null);
        report.id = SegTMEIds.objectId(UUID.randomUUID(), SegTMEIds.Kind.REPORT, 0, 0);
        // Resolve hierarchy made the CLI's whole-image report annotation the parent of a user's annotation
        Obj inside = new Obj("inside", report, "Tumor");
        List<Obj> ann = List.of(report, inside, E);
        for (String rule : List.of("all", "class:Epithelium"))
            assertFalse(TargetSelector.select(ann, List.of(), TargetRule.parse(rule), TREE).contains(E), rule);
        assertEquals(List.of(inside), TargetSelector.select(ann, List.of(), TargetRule.parse("all"), TREE),
                "the report annotation is no target, so it does not swallow the user's annotation");
        assertEquals(List.of(), TargetSelector.select(ann, List.of(report, E), TargetRule.parse("selected"), TREE));
    }

    @Test
    void noRegionTwiceAndEveryTargetKeepsItsOrder() {
        for (String rule : List.of("all", "top-level", "class:Tumor", "selected")) {
            List<Obj> got = select(rule, annotations);
            for (Obj a : got)
                for (Obj b : got)
                    for (Obj p = b.parent; p != null; p = p.parent)
                        assertNotSame(a, p, rule + ": " + b + " nested in " + a);
        }
    }

    @Test
    void recordedRuleReproducesTheSelectionWithoutIt() {
        var all = TargetSelector.recordable(annotations, List.of(T, R, U), TREE);
        assertEquals("all", all.rule().text());
        assertTrue(all.exact());
        assertEquals(TargetRule.IfNone.SKIP, all.rule().ifNone());
        var top = TargetSelector.recordable(annotations, List.of(T, R), TREE);
        assertEquals("top-level", top.rule().text());
        assertTrue(top.exact());
        var cls = TargetSelector.recordable(annotations, List.of(M), TREE);
        assertEquals("class:Margin", cls.rule().text());
        assertTrue(cls.exact());
        var inexact = TargetSelector.recordable(annotations, List.of(S), TREE); // S alone: class:Tumor gives T
        assertEquals("class:Tumor", inexact.rule().text());
        assertFalse(inexact.exact());
        var mixed = TargetSelector.recordable(annotations, List.of(T, M), TREE);
        assertEquals("all", mixed.rule().text());
        assertFalse(mixed.exact());
        // what the recorded rule chooses on another image with no selection: every candidate once
        List<Obj> other = new ArrayList<>(List.of(new Obj("A2", null, null)));
        other.add(new Obj("B2", other.get(0), null));
        assertEquals(List.of(other.get(0)), TargetSelector.select(other, null, all.rule(), TREE));
    }

    @Test
    void ruleTextRoundTripsAndBadRulesAreClear() {
        for (String s : List.of("selected", "all", "top-level", "class:Tumor", "class:Smooth muscle"))
            assertEquals(s, TargetRule.parse(s).text());
        var e = assertThrows(IllegalArgumentException.class, () -> TargetRule.parse("everything"));
        assertTrue(e.getMessage().contains("'selected', 'all', 'top-level' or 'class:NAME'"), e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> TargetRule.parse("class:  "));
        assertThrows(IllegalArgumentException.class, () -> TargetRule.IfNone.parse("maybe"));
        assertEquals(TargetRule.IfNone.WHOLE_IMAGE, TargetRule.IfNone.parse("whole-image"));
    }

    @Test
    void cyclicParentsDoNotHang() {
        Obj a = new Obj("a", null, null), b = new Obj("b", a, null);
        a.parent = b;
        assertEquals(List.of(), TargetSelector.select(List.of(a, b), List.of(), TargetRule.parse("all"), TREE));
    }
}
