package qupath.ext.segtme;

import com.google.gson.JsonArray;
import com.google.gson.JsonObject;
import qupath.ext.segtme.client.DetectionResult;
import qupath.ext.segtme.client.NucleusFeature;
import qupath.ext.segtme.client.TissueFeature;
import qupath.lib.io.PathIO;
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

/**
 * Imports one annotation's DetectTME result into the hierarchy, atomically.
 * <ol>
 * <li>Parse: the server's Features go through QuPath's own GeoJSON reader,
 *     {@code PathIO.readObjectsFromGeoJSON(InputStream)} (qupath-core, qupath/lib/io/PathIO.java; in 0.6 it
 *     delegates to GsonTools.parseObjectsFromGeoJSON: objectType "detection"/"cell" gives detections/cells,
 *     a Feature without it would become an annotation, "classification" needs name+color, "measurements" and
 *     "id" are kept). Everything is parsed and checked before the hierarchy is touched.</li>
 * <li>PAGET models also return tissue regions (objectType "annotation", classification name + colour,
 *     e.g. Epithelium / Stroma / Smooth muscle / Red blood cell): they are parsed by the same reader and must
 *     come back as classified area annotations.</li>
 * <li>Apply, under the hierarchy's lock (its public methods synchronize on the hierarchy instance):
 *     remove this annotation's previous SegTME objects (its SegTME tissue annotations, and SegTME nuclei among its
 *     children and inside those tissue annotations; nuclei with
 *     {@code removeObjectWithoutUpdate(obj, false)}, then tissue annotations with {@code (obj, true)} so that any
 *     other object a user placed inside one is kept), add the new tissue annotations and nuclei as direct
 *     children of the annotation with {@code addObjectBelowParent(annotation, obj, false)}
 *     (which only links parent and child, no geometric resolution; NOT {@code addObjects}, which attaches
 *     everything to the root), replace the SegTME measurements
 *     ({@code PathObject.getMeasurements()}, a Map view, 0.4+), set the description
 *     ({@code PathAnnotationObject.setDescription}) and metadata ({@code PathObject.getMetadata()},
 *     MinimalMetadataStore, 0.6); on any exception the previous state is restored.</li>
 * <li>Fire one event: {@code fireHierarchyChangedEvent(source, annotation)}.</li>
 * </ol>
 * SegTME nuclei are recognised by the metadata key {@link #KEY_RUN}, SegTME tissue annotations by
 * {@link #KEY_TISSUE} (keys starting with "_" are internal by QuPath's convention; the analysed annotation itself
 * also carries KEY_RUN, so annotations need their own key), so re-running replaces them and never touches other
 * objects under the annotation. On rollback each removed object goes back below its previous parent (an object a user had placed
 * inside a removed tissue annotation stays one level up).
 */
final class ObjectImporter {

    static final String KEY_RUN = "_segtme.run";
    /** Marks the tissue annotations SegTME added (PAGET models), so that a re-run replaces only those. */
    static final String KEY_TISSUE = "_segtme.tissue";
    static final String KEY_MEASUREMENTS = "_segtme.measurements";
    static final String KEY_TOKENS = "SegTME tokens";
    static final String KEY_MODEL = "SegTME model";
    static final String KEY_REPORT = "_segtme.report";

    private ObjectImporter() {}

    /** Parse the nuclei with QuPath's reader; throws if anything is not a nucleus of the requested type. */
    static List<PathObject> parse(DetectionResult result, boolean cells, String runId) throws IOException {
        JsonArray features = new JsonArray();
        for (NucleusFeature f : result.nuclei())
            features.add(f.feature());
        List<PathObject> objects = read(features);
        for (PathObject o : objects) {
            if (!o.isDetection() || o.isCell() != cells || !o.hasROI())
                throw new IOException("unexpected object from the server (expected " + (cells ? "cells" : "detections") + "): " + o);
            o.getMetadata().put(KEY_RUN, runId);
        }
        return objects;
    }

    /**
     * Parse the PAGET tissue regions with QuPath's reader (empty for nucleus models); throws unless each is a
     * classified area annotation.
     */
    static List<PathObject> parseTissue(DetectionResult result, String runId) throws IOException {
        if (result.tissue().isEmpty())
            return List.of();
        JsonArray features = new JsonArray();
        for (TissueFeature f : result.tissue())
            features.add(f.feature());
        List<PathObject> objects = read(features);
        for (PathObject o : objects) {
            if (!o.isAnnotation() || !o.hasROI() || !o.getROI().isArea() || o.getPathClass() == null)
                throw new IOException("unexpected tissue object from the server (expected a classified area annotation): " + o);
            o.getMetadata().put(KEY_RUN, runId);
            o.getMetadata().put(KEY_TISSUE, "true");
        }
        return objects;
    }

    private static List<PathObject> read(JsonArray features) throws IOException {
        JsonObject fc = new JsonObject();
        fc.addProperty("type", "FeatureCollection");
        fc.add("features", features);
        List<PathObject> objects = PathIO.readObjectsFromGeoJSON(
                new ByteArrayInputStream(fc.toString().getBytes(StandardCharsets.UTF_8)));
        if (objects.size() != features.size())
            throw new IOException("QuPath read " + objects.size() + " objects from " + features.size() + " features");
        return objects;
    }

    /** Replace the annotation's SegTME nuclei, measurements, description and metadata by {@code result}. */
    static void apply(PathObjectHierarchy hierarchy, PathObject annotation, List<PathObject> nuclei,
                      DetectionResult result, String runId) {
        apply(hierarchy, annotation, List.of(), nuclei, result, runId);
    }

    /**
     * Replace the annotation's SegTME tissue annotations, nuclei, measurements, description and metadata by
     * {@code result}; tissue annotations and nuclei become direct children of {@code annotation}.
     */
    static void apply(PathObjectHierarchy hierarchy, PathObject annotation, List<PathObject> tissue,
                      List<PathObject> nuclei, DetectionResult result, String runId) {
        var report = result.report();
        synchronized (hierarchy) {
            // previous SegTME objects: the annotation's SegTME tissue annotations (KEY_TISSUE) and SegTME nuclei among
            // its children and its tissue annotations' children ("Resolve hierarchy" moves nuclei into the tissue
            // regions); never objects inside other child annotations. Nuclei first, then tissue annotations.
            List<PathObject> oldTissue = annotation.getChildObjects().stream()
                    .filter(p -> p.isAnnotation() && p.getMetadata().containsKey(KEY_TISSUE)).toList();
            List<PathObject> previous = new ArrayList<>();
            List<PathObject> containers = new ArrayList<>(oldTissue);
            containers.add(0, annotation);
            for (PathObject c : containers)
                c.getChildObjects().stream().filter(p -> p.isDetection() && p.getMetadata().containsKey(KEY_RUN))
                        .forEach(previous::add);
            previous.addAll(oldTissue);
            Map<PathObject, PathObject> parents = new IdentityHashMap<>();
            for (PathObject p : previous)
                parents.put(p, p.getParent());
            Map<String, Double> oldMeasurements = new LinkedHashMap<>(annotation.getMeasurements());
            Map<String, String> oldMetadata = new LinkedHashMap<>(annotation.getMetadata());
            String oldDescription = annotation instanceof PathAnnotationObject a ? a.getDescription() : null;
            List<PathObject> added = new ArrayList<>(tissue.size() + nuclei.size());
            List<PathObject> removed = new ArrayList<>(previous.size());
            try {
                for (PathObject p : previous) {
                    hierarchy.removeObjectWithoutUpdate(p, p.isAnnotation());
                    removed.add(p);
                }
                for (PathObject t : tissue) {
                    hierarchy.addObjectBelowParent(annotation, t, false);
                    added.add(t);
                }
                for (PathObject n : nuclei) {
                    hierarchy.addObjectBelowParent(annotation, n, false);
                    added.add(n);
                }
                var measurements = annotation.getMeasurements();
                String prevKeys = annotation.getMetadata().getOrDefault(KEY_MEASUREMENTS, "");
                for (String k : prevKeys.split("\n"))
                    if (!k.isEmpty())
                        measurements.remove(k);
                report.measurements().forEach(measurements::put);
                var md = annotation.getMetadata();
                md.put(KEY_MEASUREMENTS, String.join("\n", report.measurements().keySet()));
                md.put(KEY_RUN, runId);
                md.put(KEY_MODEL, result.modelName());
                md.put(KEY_TOKENS, String.join(" ", report.tokens()));
                md.put(KEY_REPORT, report.reportJson().toString());
                if (annotation instanceof PathAnnotationObject a)
                    a.setDescription(describe(result));
            } catch (RuntimeException e) {
                // roll back to the previous state (each removed object below its previous parent), then rethrow
                for (PathObject n : added)
                    hierarchy.removeObjectWithoutUpdate(n, false);
                for (int k = removed.size() - 1; k >= 0; k--) { // tissue annotations first, then the nuclei inside them
                    PathObject p = removed.get(k);
                    PathObject parent = parents.get(p);
                    hierarchy.addObjectBelowParent(parent == null ? annotation : parent, p, false);
                }
                restore(annotation.getMeasurements(), oldMeasurements);
                restore(annotation.getMetadata(), oldMetadata);
                if (annotation instanceof PathAnnotationObject a && oldDescription != null)
                    a.setDescription(oldDescription);
                throw e;
            }
        }
        // One structural event for the annotation's subtree (covers added/removed children and measurements).
        hierarchy.fireHierarchyChangedEvent(ObjectImporter.class, annotation);
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
