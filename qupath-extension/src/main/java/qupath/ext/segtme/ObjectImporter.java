package qupath.ext.segtme;

import com.google.gson.JsonArray;
import com.google.gson.JsonObject;
import qupath.ext.segtme.client.DetectionResult;
import qupath.ext.segtme.client.NucleusFeature;
import qupath.lib.io.PathIO;
import qupath.lib.objects.PathAnnotationObject;
import qupath.lib.objects.PathObject;
import qupath.lib.objects.hierarchy.PathObjectHierarchy;

import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
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
 * <li>Apply, under the hierarchy's lock (its public methods synchronize on the hierarchy instance):
 *     remove this annotation's previous SegTME nuclei with {@code removeObjectWithoutUpdate(obj, false)},
 *     add the new ones below the annotation with {@code addObjectBelowParent(annotation, obj, false)}
 *     (NOT {@code addObjects}, which attaches everything to the root), replace the SegTME measurements
 *     ({@code PathObject.getMeasurements()}, a Map view, 0.4+), set the description
 *     ({@code PathAnnotationObject.setDescription}) and metadata ({@code PathObject.getMetadata()},
 *     MinimalMetadataStore, 0.6); on any exception the previous state is restored.</li>
 * <li>Fire one event: {@code fireHierarchyChangedEvent(source, annotation)}.</li>
 * </ol>
 * SegTME nuclei are recognised by the metadata key {@link #KEY_RUN} (keys starting with "_" are internal by
 * QuPath's convention), so re-running replaces them and never touches other detections under the annotation.
 */
final class ObjectImporter {

    static final String KEY_RUN = "_segtme.run";
    static final String KEY_MEASUREMENTS = "_segtme.measurements";
    static final String KEY_TOKENS = "SegTME tokens";
    static final String KEY_MODEL = "SegTME model";
    static final String KEY_REPORT = "_segtme.report";

    private ObjectImporter() {}

    /** Parse the result with QuPath's reader; throws if anything is not a nucleus of the requested type. */
    static List<PathObject> parse(DetectionResult result, boolean cells, String runId) throws IOException {
        JsonArray features = new JsonArray();
        for (NucleusFeature f : result.nuclei())
            features.add(f.feature());
        JsonObject fc = new JsonObject();
        fc.addProperty("type", "FeatureCollection");
        fc.add("features", features);
        List<PathObject> objects = PathIO.readObjectsFromGeoJSON(
                new ByteArrayInputStream(fc.toString().getBytes(StandardCharsets.UTF_8)));
        if (objects.size() != result.nuclei().size())
            throw new IOException("QuPath read " + objects.size() + " objects from " + result.nuclei().size() + " features");
        for (PathObject o : objects) {
            if (!o.isDetection() || o.isCell() != cells || !o.hasROI())
                throw new IOException("unexpected object from the server (expected " + (cells ? "cells" : "detections") + "): " + o);
            o.getMetadata().put(KEY_RUN, runId);
        }
        return objects;
    }

    /** Replace the annotation's SegTME nuclei, measurements, description and metadata by {@code result}. */
    static void apply(PathObjectHierarchy hierarchy, PathObject annotation, List<PathObject> nuclei,
                      DetectionResult result, String runId) {
        var report = result.report();
        synchronized (hierarchy) {
            List<PathObject> previous = annotation.getChildObjects().stream()
                    .filter(p -> p.isDetection() && p.getMetadata().containsKey(KEY_RUN)).toList();
            Map<String, Double> oldMeasurements = new LinkedHashMap<>(annotation.getMeasurements());
            Map<String, String> oldMetadata = new LinkedHashMap<>(annotation.getMetadata());
            String oldDescription = annotation instanceof PathAnnotationObject a ? a.getDescription() : null;
            List<PathObject> added = new ArrayList<>(nuclei.size());
            try {
                for (PathObject p : previous)
                    hierarchy.removeObjectWithoutUpdate(p, false);
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
                // roll back to exactly the previous state, then rethrow
                for (PathObject n : added)
                    hierarchy.removeObjectWithoutUpdate(n, false);
                for (PathObject p : previous)
                    hierarchy.addObjectBelowParent(annotation, p, false);
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
        return sb.toString();
    }
}
