package qupath.ext.segtme;

import qupath.ext.segtme.client.AnnotationRegion;
import qupath.ext.segtme.client.CancelSignal;
import qupath.ext.segtme.client.ClientConfig;
import qupath.ext.segtme.client.DetectOptions;
import qupath.ext.segtme.client.DetectionResult;
import qupath.ext.segtme.client.JobProgress;
import qupath.ext.segtme.client.ProgressListener;
import qupath.ext.segtme.client.SegTMEClient;
import qupath.lib.images.ImageData;
import qupath.lib.io.GsonTools;
import qupath.lib.objects.PathObject;
import qupath.lib.plugins.workflow.DefaultScriptableWorkflowStep;

import java.awt.image.BufferedImage;
import java.io.IOException;
import java.util.ArrayList;
import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.CancellationException;

/**
 * Scripting API. In a QuPath script (also "Run for project"):
 * <pre>
 * qupath.ext.segtme.SegTME.detectTME(getCurrentImageData(), getAnnotationObjects(),
 *     [server: 'localhost:50051', model: '', tileSize: 0, overlap: -1, output: 'detections', narrative: true])
 * </pre>
 * Missing keys take the defaults shown; the bearer token is read from key {@code token} or, better (it is
 * not recorded in the workflow), from the environment variable {@code SEGTME_TOKEN}.
 * With a PAGET model ({@code model: 'paget_s'} or {@code 'paget_h'}) each annotation also receives the tissue regions
 * (Epithelium, Stroma, Smooth muscle, Red blood cell) as classified child annotations next to the classified nuclei.
 * Each annotation is one DetectTME job and is imported atomically (see {@link ObjectImporter}); a call that
 * fails or is cancelled leaves that annotation exactly as it was (annotations finished before stay done).
 * Every successful call is recorded in the image's workflow history as a script step.
 * <p>
 * QuPath API relied on (checked against QuPath 0.6 sources/javadoc): ImageData.getServer()/getHierarchy()/
 * getHistoryWorkflow(); ImageServer.isRGB()/getPixelCalibration(); PixelCalibration.hasPixelSizeMicrons()/
 * getAveragedPixelSizeMicrons(); ROI.getBoundsX/Y/Width/Height(), isArea(), getGeometry();
 * GsonTools.getInstance().toJson(Geometry) (JTS geometry -> GeoJSON geometry);
 * Workflow.addStep(new DefaultScriptableWorkflowStep(name, Map, script)).
 */
public final class SegTME {

    private SegTME() {}

    /** Options of a run (see the class comment for the map keys). */
    public record Options(String server, String token, boolean tls, String model, int tileSize, int overlap,
                          boolean cells, boolean narrative) {

        public static Options fromMap(Map<String, ?> m) {
            Map<String, ?> o = m == null ? Map.of() : m;
            String token = str(o, "token", System.getenv("SEGTME_TOKEN"));
            String output = str(o, "output", "detections").toLowerCase();
            if (!output.equals("detections") && !output.equals("cells"))
                throw new IllegalArgumentException("output must be 'detections' or 'cells', got '" + output + "'");
            return new Options(str(o, "server", "localhost:50051"), token, Boolean.parseBoolean(str(o, "tls", "false")),
                    str(o, "model", ""), Integer.parseInt(str(o, "tileSize", "0")), Integer.parseInt(str(o, "overlap", "-1")),
                    output.equals("cells"), Boolean.parseBoolean(str(o, "narrative", "true")));
        }

        private static String str(Map<String, ?> m, String key, String dflt) {
            Object v = m.get(key);
            return v == null ? (dflt == null ? "" : dflt) : String.valueOf(v);
        }

        /** The options as recorded in the workflow (never the token). */
        Map<String, Object> toMap() {
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("server", server);
            m.put("tls", tls);
            m.put("model", model);
            m.put("tileSize", tileSize);
            m.put("overlap", overlap);
            m.put("output", cells ? "cells" : "detections");
            m.put("narrative", narrative);
            return m;
        }
    }

    /**
     * What one annotation got.
     *
     * @param tissueAnnotations number of tissue-region annotations added below it (PAGET models; 0 otherwise)
     */
    public record Result(PathObject annotation, int nuclei, int tissueAnnotations, Map<String, Double> measurements,
                         List<String> tokens, String narrative) {}

    /** Script entry point: options as a Groovy map. */
    public static List<Result> detectTME(ImageData<BufferedImage> imageData, Collection<? extends PathObject> annotations,
                                         Map<String, ?> options) throws IOException {
        return detectTME(imageData, annotations, Options.fromMap(options), null, null);
    }

    static boolean isAreaAnnotation(PathObject p) {
        return p != null && p.isAnnotation() && p.hasROI() && p.getROI().isArea();
    }

    /** Full entry point (used by the GUI command): progress in 0..1 over all annotations, cancellable. */
    public static List<Result> detectTME(ImageData<BufferedImage> imageData, Collection<? extends PathObject> annotations,
                                         Options options, ProgressListener listener, CancelSignal cancel) throws IOException {
        if (imageData == null)
            throw new IllegalArgumentException("no image (open an image first)");
        var server = imageData.getServer();
        if (!server.isRGB())
            throw new IllegalArgumentException("SegTME needs an RGB brightfield (H&E) image");
        var cal = server.getPixelCalibration();
        if (!cal.hasPixelSizeMicrons())
            throw new IllegalArgumentException("the image has no pixel size in µm; set it under the Image tab first");
        List<PathObject> targets = annotations.stream().filter(SegTME::isAreaAnnotation).map(p -> (PathObject) p).toList();
        if (targets.isEmpty())
            throw new IllegalArgumentException("no area annotations given (select or create one first)");
        CancelSignal cs = cancel == null ? new CancelSignal() : cancel;
        ClientConfig config = ClientConfig.builder(options.server()).tls(options.tls()).bearerToken(options.token()).build();
        var source = new QuPathTileSource(server);
        List<Result> results = new ArrayList<>();
        try (SegTMEClient client = new SegTMEClient(config)) {
            for (int k = 0; k < targets.size(); k++) {
                PathObject annotation = targets.get(k);
                var roi = annotation.getROI();
                long x0 = Math.max(0, (long) Math.floor(roi.getBoundsX()));
                long y0 = Math.max(0, (long) Math.floor(roi.getBoundsY()));
                long x1 = Math.min(server.getWidth(), (long) Math.ceil(roi.getBoundsX() + roi.getBoundsWidth()));
                long y1 = Math.min(server.getHeight(), (long) Math.ceil(roi.getBoundsY() + roi.getBoundsHeight()));
                String geometry = GsonTools.getInstance().toJson(roi.getGeometry());
                var region = new AnnotationRegion(x0, y0, x1 - x0, y1 - y0, geometry, annotation.getID().toString(),
                        cal.getAveragedPixelSizeMicrons());
                var detect = DetectOptions.builder().model(options.model()).tileSize(options.tileSize())
                        .overlap(options.overlap()).narrative(options.narrative())
                        .output(options.cells() ? DetectOptions.Output.CELLS : DetectOptions.Output.DETECTIONS).build();
                final int done = k, n = targets.size();
                ProgressListener scaled = listener == null ? null : p -> listener.onProgress(new JobProgress(p.tilesSent(),
                        p.tilesDone(), p.tilesExpected(), p.nucleiSoFar(), (done + p.fraction()) / n,
                        "annotation " + (done + 1) + "/" + n + ": " + p.stage()));
                DetectionResult result = client.detectTME(source, region, detect, scaled, cs);
                if (cs.isCancelled())
                    throw new CancellationException("cancelled");
                String runId = UUID.randomUUID().toString();
                var nuclei = ObjectImporter.parse(result, options.cells(), runId);
                var tissue = ObjectImporter.parseTissue(result, runId); // PAGET models: tissue regions, else empty
                ObjectImporter.apply(imageData.getHierarchy(), annotation, tissue, nuclei, result, runId);
                results.add(new Result(annotation, nuclei.size(), tissue.size(), result.report().measurements(),
                        result.report().tokens(), result.report().narrative()));
            }
        }
        boolean all = imageData.getHierarchy().getAnnotationObjects().stream().filter(SegTME::isAreaAnnotation)
                .allMatch(targets::contains);
        String selection = all ? "getAnnotationObjects()" : "getSelectedObjects().findAll { it.isAnnotation() }";
        String script = "qupath.ext.segtme.SegTME.detectTME(getCurrentImageData(), " + selection + ", " + groovyMap(options.toMap()) + ")";
        imageData.getHistoryWorkflow().addStep(new DefaultScriptableWorkflowStep("SegTME: Detect TME", options.toMap(), script));
        return results;
    }

    /** A Groovy map literal; strings single-quoted and escaped. */
    static String groovyMap(Map<String, Object> m) {
        List<String> parts = new ArrayList<>();
        m.forEach((k, v) -> parts.add(k + ": " + (v instanceof String s
                ? "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'" : String.valueOf(v))));
        return "[" + String.join(", ", parts) + "]";
    }
}
