package qupath.ext.segtme;

import com.google.gson.JsonArray;
import com.google.gson.JsonObject;
import qupath.ext.segtme.client.DetectionResult;
import qupath.ext.segtme.client.NucleusFeature;
import qupath.ext.segtme.client.SegTMEIds;
import qupath.ext.segtme.client.TissueFeature;
import qupath.lib.io.PathIO;
import qupath.lib.objects.CellTools;
import qupath.lib.objects.PathAnnotationObject;
import qupath.lib.objects.PathObject;
import qupath.lib.objects.hierarchy.PathObjectHierarchy;

import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.IdentityHashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.UUID;

/**
 * Imports one annotation's DetectTME result into the hierarchy, atomically.
 * <ol>
 * <li>Parse, before the hierarchy is touched: the server's Features go through QuPath's own GeoJSON reader
 *     ({@code PathIO.readObjectsFromGeoJSON(InputStream)}); nuclei must come back as detections, PAGET tissue
 *     regions as classified area annotations. For {@code output: 'cells'} the detections become cells with
 *     QuPath's {@code CellTools.detectionsToCells(detections, distancePx, -1)} (nucleus grown by the cell expansion,
 *     stopping where cells meet). Every object gets its {@link SegTMEIds} ID ({@code PathObject.setID}).</li>
 * <li>Apply, holding the hierarchy's lock (its public methods synchronize on it): the previous SegTME objects of
 *     <b>this</b> annotation are found by ID anywhere in the hierarchy ({@code getDetectionObjects()},
 *     {@code getAnnotationObjects()}) — also after <i>Resolve hierarchy</i> moved them into sub-annotations or
 *     tissue regions — and removed ({@code PathObject.removeChildObjects} per parent, a batch operation); objects
 *     a user placed inside a removed SegTME tissue annotation move up to its parent. The new tissue annotations and
 *     nuclei become direct children of the annotation ({@code addChildObjects}, batch, no geometric resolution).
 *     The SegTME measurements are replaced ({@code getMeasurements()}: {@code Map<String, Number>} in 0.6), the
 *     description ({@code PathAnnotationObject.setDescription}) and the annotation's metadata (a handful of keys on
 *     the few analysed annotations, never on nuclei) are set. On any exception the previous state is restored.</li>
 * <li>One event: {@code fireHierarchyChangedEvent(source, annotation)}, or for the whole hierarchy when previous
 *     objects were removed outside the annotation's subtree.</li>
 * </ol>
 * Objects SegTME did not make (other IDs), and SegTME objects of other annotations, are never touched.
 */
final class ObjectImporter {

    static final String KEY_MEASUREMENTS = "_segtme.measurements";
    static final String KEY_TOKENS = "SegTME tokens";
    static final String KEY_MODEL = "SegTME model";
    static final String KEY_REPORT = "_segtme.report";

    private ObjectImporter() {}

    /** Parsed objects of one job, IDs set. */
    record Imported(List<PathObject> tissue, List<PathObject> nuclei) {}

    /**
     * Parse the nuclei (and PAGET tissue regions) with QuPath's reader and give them SegTME IDs.
     *
     * @param cellExpansionPx &lt; 0: detections; &ge; 0: cells, nuclei grown by this many full-resolution px
     */
    static Imported parse(DetectionResult result, UUID annotationId, double cellExpansionPx) throws IOException {
        JsonArray features = new JsonArray();
        for (NucleusFeature f : result.nuclei())
            features.add(f.feature());
        List<PathObject> nuclei = read(features);
        for (PathObject o : nuclei)
            if (!o.isDetection() || o.isCell() || !o.hasROI())
                throw new IOException("unexpected object from the server (expected detections): " + o);
        if (cellExpansionPx >= 0 && !nuclei.isEmpty()) {
            List<PathObject> cells = CellTools.detectionsToCells(nuclei, cellExpansionPx, -1);
            if (cells.size() != nuclei.size())
                throw new IOException("QuPath made " + cells.size() + " cells from " + nuclei.size() + " nuclei");
            nuclei = cells;
        }
        List<PathObject> tissue = List.of();
        if (!result.tissue().isEmpty()) {
            JsonArray tf = new JsonArray();
            for (TissueFeature f : result.tissue())
                tf.add(f.feature());
            tissue = read(tf);
            for (PathObject o : tissue)
                if (!o.isAnnotation() || !o.hasROI() || !o.getROI().isArea() || o.getPathClass() == null)
                    throw new IOException("unexpected tissue object from the server (expected a classified area annotation): " + o);
        }
        int nonce = SegTMEIds.newRunNonce();
        for (int k = 0; k < nuclei.size(); k++)
            nuclei.get(k).setID(SegTMEIds.objectId(annotationId, SegTMEIds.Kind.NUCLEUS, nonce, k));
        for (int k = 0; k < tissue.size(); k++)
            tissue.get(k).setID(SegTMEIds.objectId(annotationId, SegTMEIds.Kind.TISSUE, nonce, k));
        return new Imported(tissue, nuclei);
    }

    private static List<PathObject> read(JsonArray features) throws IOException {
        JsonObject fc = new JsonObject();
        fc.addProperty("type", "FeatureCollection");
        fc.add("features", features);
        List<PathObject> objects = PathIO.readObjectsFromGeoJSON(
                new ByteArrayInputStream(fc.toString().getBytes(StandardCharsets.UTF_8)));
        if (objects.size() != features.size())
            throw new IOException("QuPath read " + objects.size() + " objects from " + features.size() + " features");
        return new ArrayList<>(objects);
    }

    /** The SegTME objects made for {@code annotation}, anywhere in the hierarchy: nuclei first, then tissue annotations. */
    static List<PathObject> previousObjects(PathObjectHierarchy hierarchy, PathObject annotation) {
        UUID id = annotation.getID();
        List<PathObject> out = new ArrayList<>();
        for (PathObject p : hierarchy.getDetectionObjects())
            if (SegTMEIds.madeFor(p.getID(), id, SegTMEIds.Kind.NUCLEUS))
                out.add(p);
        for (PathObject p : hierarchy.getAnnotationObjects())
            if (SegTMEIds.madeFor(p.getID(), id, SegTMEIds.Kind.TISSUE))
                out.add(p);
        return out;
    }

    /**
     * Replace the annotation's SegTME tissue annotations, nuclei, measurements, description and metadata by
     * {@code imported} / {@code result}; tissue annotations and nuclei become direct children of {@code annotation}.
     */
    static void apply(PathObjectHierarchy hierarchy, PathObject annotation, Imported imported, DetectionResult result) {
        var report = result.report();
        boolean outside = false;
        synchronized (hierarchy) {
            List<PathObject> previous = previousObjects(hierarchy, annotation);
            Map<PathObject, List<PathObject>> byParent = new IdentityHashMap<>();
            for (PathObject p : previous)
                byParent.computeIfAbsent(p.getParent(), q -> new ArrayList<>()).add(p);
            for (PathObject parent : byParent.keySet())
                outside |= parent != annotation && !isDescendant(parent, annotation);
            Map<PathObject, List<PathObject>> rescued = new IdentityHashMap<>(); // user objects inside old tissue annotations
            Map<String, Number> oldMeasurements = new LinkedHashMap<>(annotation.getMeasurements());
            Map<String, String> oldMetadata = new LinkedHashMap<>(annotation.getMetadata());
            String oldDescription = annotation instanceof PathAnnotationObject a ? a.getDescription() : null;
            List<PathObject> added = new ArrayList<>(imported.tissue().size() + imported.nuclei().size());
            added.addAll(imported.tissue());
            added.addAll(imported.nuclei());
            try {
                byParent.forEach(PathObject::removeChildObjects);
                for (PathObject p : previous) {
                    if (!p.isAnnotation() || !p.hasChildObjects())
                        continue;
                    List<PathObject> keep = new ArrayList<>(p.getChildObjects());
                    PathObject parent = byParentOf(byParent, p);
                    rescued.put(p, keep);
                    parent.addChildObjects(keep);
                }
                annotation.addChildObjects(added);
                var measurements = annotation.getMeasurements();
                String prevKeys = annotation.getMetadata().getOrDefault(KEY_MEASUREMENTS, "");
                for (String k : prevKeys.split("\n"))
                    if (!k.isEmpty())
                        measurements.remove(k);
                measurements.putAll(report.measurements());
                var md = annotation.getMetadata();
                md.put(KEY_MEASUREMENTS, String.join("\n", report.measurements().keySet()));
                md.put(KEY_MODEL, result.modelName());
                md.put(KEY_TOKENS, String.join(" ", report.tokens()));
                md.put(KEY_REPORT, report.reportJson().toString());
                if (annotation instanceof PathAnnotationObject a)
                    a.setDescription(describe(result));
            } catch (RuntimeException e) {
                // roll back: drop what was added, give rescued objects back, re-attach every removed object to its parent
                annotation.removeChildObjects(added);
                rescued.forEach((tissue, kids) -> tissue.addChildObjects(kids));
                byParent.forEach(PathObject::addChildObjects);
                restore(annotation.getMeasurements(), oldMeasurements);
                restore(annotation.getMetadata(), oldMetadata);
                if (annotation instanceof PathAnnotationObject a)
                    a.setDescription(oldDescription);
                throw e;
            }
        }
        if (outside)
            hierarchy.fireHierarchyChangedEvent(ObjectImporter.class);
        else
            hierarchy.fireHierarchyChangedEvent(ObjectImporter.class, annotation);
    }

    private static PathObject byParentOf(Map<PathObject, List<PathObject>> byParent, PathObject child) {
        for (var e : byParent.entrySet())
            for (PathObject c : e.getValue())
                if (c == child)
                    return e.getKey();
        throw new IllegalStateException("no parent recorded for " + child);
    }

    private static boolean isDescendant(PathObject o, PathObject ancestor) {
        for (PathObject p = o; p != null; p = p.getParent())
            if (p == ancestor)
                return true;
        return false;
    }

    private static <V> void restore(Map<String, V> map, Map<String, V> old) {
        for (String k : new ArrayList<>(map.keySet()))
            if (!old.containsKey(k))
                map.remove(k);
        map.putAll(old);
    }

    /** Narrative first, then the tokens and provenance, as the annotation's free-text description. */
    static String describe(DetectionResult result) {
        var r = result.report();
        StringBuilder sb = new StringBuilder();
        if (!r.narrative().isBlank())
            sb.append(r.narrative().strip()).append("\n\n");
        if (!r.tokens().isEmpty())
            sb.append("Tokens: ").append(String.join(" ", r.tokens())).append("\n");
        sb.append("SegTME model: ").append(result.modelName()).append("; nuclei: ").append(r.nucleiTotal());
        if (!result.tissue().isEmpty()) {
            sb.append("; tissue regions:");
            for (TissueFeature t : result.tissue()) {
                Double um2 = t.measurements().get("Area µm^2");
                sb.append(' ').append(t.className());
                if (um2 != null && Double.isFinite(um2))
                    sb.append(String.format(java.util.Locale.ROOT, " %.0f µm²", um2));
                sb.append(';');
            }
            sb.setLength(sb.length() - 1);
        }
        return sb.toString();
    }
}
