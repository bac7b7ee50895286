package qupath.ext.segtme;

import qupath.ext.segtme.client.AnnotationRegion;
import qupath.ext.segtme.client.CancelSignal;
import qupath.ext.segtme.client.DetectionResult;
import qupath.ext.segtme.client.JobProgress;
import qupath.ext.segtme.client.ProgressListener;
import qupath.ext.segtme.client.RunSettings;
import qupath.ext.segtme.client.SegTMEClient;
import qupath.ext.segtme.client.SegTMEIds;
import qupath.ext.segtme.client.TargetRule;
import qupath.ext.segtme.client.TargetSelector;
import qupath.ext.segtme.client.WorkflowScript;
import qupath.lib.images.ImageData;
import qupath.lib.io.GsonTools;
import qupath.lib.objects.PathObject;
import qupath.lib.objects.PathObjects;
import qupath.lib.objects.hierarchy.PathObjectHierarchy;
import qupath.lib.plugins.workflow.DefaultScriptableWorkflowStep;
import qupath.lib.regions.ImagePlane;
import qupath.lib.roi.ROIs;

import java.awt.image.BufferedImage;
import java.io.IOException;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.CancellationException;

/**
 * Scripting API; also what the GUI command and the recorded workflow steps call. In a QuPath script
 * (also <i>Run for project</i>):
 * <pre>
 * qupath.ext.segtme.SegTME.detectTME(getCurrentImageData(), [targets: 'all', model: '', output: 'detections'])
 * qupath.ext.segtme.SegTME.detectTME(getCurrentImageData(), getSelectedObjects(), [:])   // given objects
 * </pre>
 * The keys are those of {@link RunSettings} (the token comes from key {@code token} or, better, since it is never
 * recorded, from {@code SEGTME_TOKEN}). Which annotations are analysed, and how nesting is handled, is
 * {@link TargetRule} / {@link TargetSelector} (client core, unit-tested); which objects a re-run replaces is
 * {@link SegTMEIds} (object IDs).
 * <p>
 * Each annotation is one DetectTME job imported atomically ({@link ObjectImporter}). If a later annotation fails
 * or is cancelled, the annotations finished before it <b>stay changed</b> (no roll-back of finished jobs: each is
 * a complete, consistent result), the failed one is left exactly as it was, and the workflow step is recorded
 * anyway (named "... stopped after k of n annotations"), so the history matches the hierarchy. Replaying the step
 * redoes all targets; finished ones are replaced, not duplicated.
 * <p>
 * QuPath 0.6 API relied on (compiled against the v0.6.0 sources, see docs/qupath.md): ImageData.getServer()/
 * getHierarchy()/getHistoryWorkflow(); ImageServer.isRGB()/getPixelCalibration()/nZSlices()/nTimepoints();
 * PixelCalibration.hasPixelSizeMicrons()/getAveragedPixelSizeMicrons(); PathObjectHierarchy.getAnnotationObjects()/
 * addObject(PathObject); ROI bounds/isArea()/getGeometry(); GsonTools.getInstance().toJson(Geometry);
 * ROIs.createRectangleROI(x, y, w, h, ImagePlane); PathObjects.createAnnotationObject(ROI);
 * Workflow.addStep(new DefaultScriptableWorkflowStep(name, Map, script)).
 */
public final class SegTME {

    private SegTME() {}

    /**
     * What one annotation got.
     *
     * @param tissueAnnotations number of tissue-region annotations added below it (PAGET models; 0 otherwise)
     */
    public record Result(PathObject annotation, int nuclei, int tissueAnnotations, Map<String, Double> measurements,
                         List<String> tokens, String narrative) {}

    /** Script entry point, targets by rule (default {@code targets: 'all'}): what recorded workflow steps call. */
    public static List<Result> detectTME(ImageData<BufferedImage> imageData, Map<String, ?> options) throws IOException {
        return detectTME(imageData, List.of(), RunSettings.fromMap(options, TargetRule.Scope.ALL, System::getenv), null, null);
    }

    /** Script entry point with explicit objects (default {@code targets: 'selected'}, i.e. these objects). */
    public static List<Result> detectTME(ImageData<BufferedImage> imageData, Collection<? extends PathObject> objects,
                                         Map<String, ?> options) throws IOException {
        return detectTME(imageData, objects, RunSettings.fromMap(options, TargetRule.Scope.SELECTED, System::getenv), null, null);
    }

    /** The {@link TargetSelector.Tree} view of QuPath objects (parent null = the image's root). */
    static final TargetSelector.Tree<PathObject> TREE = new TargetSelector.Tree<>() {
        @Override
        public PathObject parent(PathObject o) {
            PathObject p = o.getParent();
            return p == null || p.isRootObject() ? null : p;
        }

        @Override
        public boolean isAreaAnnotation(PathObject o) {
            return o.isAnnotation() && o.hasROI() && o.getROI().isArea();
        }

        @Override
        public UUID id(PathObject o) {
            return o.getID();
        }

        @Override
        public String className(PathObject o) {
            return o.getPathClass() == null ? null : o.getPathClass().toString();
        }
    };

    /** The annotations a run with {@code rule} analyses ({@code selected} used by the 'selected' scope). */
    static List<PathObject> targets(PathObjectHierarchy hierarchy, Collection<? extends PathObject> selected, TargetRule rule) {
        return TargetSelector.select(hierarchy.getAnnotationObjects(), selected, rule, TREE);
    }

    /** Full entry point (used by the GUI command): progress in 0..1 over all annotations, cancellable. */
    public static List<Result> detectTME(ImageData<BufferedImage> imageData, Collection<? extends PathObject> objects,
                                         RunSettings settings, ProgressListener listener, CancelSignal cancel) throws IOException {
        if (imageData == null)
            throw new IllegalArgumentException("no image (open an image first)");
        var server = imageData.getServer();
        if (!server.isRGB())
            throw new IllegalArgumentException("SegTME needs an RGB brightfield (H&E) image");
        var cal = server.getPixelCalibration();
        if (!cal.hasPixelSizeMicrons())
            throw new IllegalArgumentException("the image has no pixel size in µm; set it under the Image tab first");
        if (settings.z() >= server.nZSlices() || settings.t() >= server.nTimepoints())
            throw new IllegalArgumentException("plane z=" + settings.z() + ", t=" + settings.t() + " is outside the image ("
                    + server.nZSlices() + " z-slices, " + server.nTimepoints() + " timepoints)");
        var hierarchy = imageData.getHierarchy();
        TargetRule rule = settings.targets();
        List<PathObject> targets = targets(hierarchy, objects, rule);
        PathObject created = null;
        if (targets.isEmpty()) {
            switch (rule.ifNone()) {
                case SKIP -> { return List.of(); }
                case ERROR -> throw new IllegalArgumentException("no area annotations to analyse (targets '" + rule.text()
                        + "'; select or create one first, or use ifNone: 'whole-image')");
                case WHOLE_IMAGE -> {
                    settings.toClientConfig(); // bad settings: fail before adding anything
                    created = addWholeImageAnnotation(imageData, settings);
                    targets = List.of(created);
                }
            }
        }
        var config = settings.toClientConfig();  // checks the CA file before connecting
        // what the workflow records: a selection-free rule (the selection is not saved with an image)
        TargetSelector.Recorded recorded = rule.scope() == TargetRule.Scope.SELECTED
                ? TargetSelector.recordable(hierarchy.getAnnotationObjects(), targets, TREE)
                : new TargetSelector.Recorded(rule, true);
        CancelSignal cs = cancel == null ? new CancelSignal() : cancel;
        double mpp = cal.getAveragedPixelSizeMicrons();
        var source = new QuPathTileSource(server, settings.z(), settings.t());
        List<Result> results = new ArrayList<>();
        List<AnnotationRegion> regions = new ArrayList<>(targets.size());
        for (PathObject annotation : targets)  // every bad annotation is refused before the first job starts
            regions.add(region(annotation, server.getWidth(), server.getHeight(), mpp));
        try (SegTMEClient client = new SegTMEClient(config)) {
            for (int k = 0; k < targets.size(); k++) {
                PathObject annotation = targets.get(k);
                var region = regions.get(k);
                final int done = k, n = targets.size();
                ProgressListener scaled = listener == null ? null : p -> listener.onProgress(new JobProgress(p.tilesSent(),
                        p.tilesDone(), p.tilesExpected(), p.nucleiSoFar(), (done + p.fraction()) / n,
                        "annotation " + (done + 1) + "/" + n + ": " + p.stage()));
                DetectionResult result = client.detectTME(source, region, settings.toDetectOptions(), scaled, cs);
                if (cs.isCancelled())
                    throw new CancellationException("cancelled");
                var imported = ObjectImporter.parse(result, annotation.getID(), settings.cells() ? settings.cellExpansion() / mpp : -1);
                ObjectImporter.apply(hierarchy, annotation, imported, result);
                results.add(new Result(annotation, imported.nuclei().size(), imported.tissue().size(),
                        result.report().measurements(), result.report().tokens(), result.report().narrative()));
            }
        } finally {
            if (results.isEmpty() && created != null)
                hierarchy.removeObject(created, false); // the whole-image annotation of a run that produced nothing
            // record what changed the hierarchy, also when a later annotation failed (see the class comment)
            if (!results.isEmpty()) {
                RunSettings rec = settings.withTargets(recorded.rule());
                imageData.getHistoryWorkflow().addStep(new DefaultScriptableWorkflowStep(
                        WorkflowScript.stepName(results.size(), targets.size()), rec.toRecordedMap(),
                        WorkflowScript.script(rec, recorded.exact())));
            }
        }
        return results;
    }

    /** The annotation's bounds clipped to the image (full-resolution px) and its geometry; refuses one outside the image. */
    private static AnnotationRegion region(PathObject annotation, long width, long height, double mpp) {
        var roi = annotation.getROI();
        long x0 = Math.max(0, (long) Math.floor(roi.getBoundsX()));
        long y0 = Math.max(0, (long) Math.floor(roi.getBoundsY()));
        long x1 = Math.min(width, (long) Math.ceil(roi.getBoundsX() + roi.getBoundsWidth()));
        long y1 = Math.min(height, (long) Math.ceil(roi.getBoundsY() + roi.getBoundsHeight()));
        if (x1 <= x0 || y1 <= y0)
            throw new IllegalArgumentException("annotation " + describe(annotation) + " lies outside the image ("
                    + width + "x" + height + " px)");
        String geometry = GsonTools.getInstance().toJson(roi.getGeometry());
        return new AnnotationRegion(x0, y0, x1 - x0, y1 - y0, geometry, annotation.getID().toString(), mpp);
    }

    private static String describe(PathObject o) {
        String name = o.getName() != null ? o.getName() : o.getPathClass() != null ? o.getPathClass().toString() : "";
        return (name.isEmpty() ? "" : "'" + name + "' ") + o.getID();
    }

    /** {@code ifNone: 'whole-image'}: one unclassified rectangle annotation covering the image, on the run's plane. */
    private static PathObject addWholeImageAnnotation(ImageData<BufferedImage> imageData, RunSettings settings) {
        var server = imageData.getServer();
        var roi = ROIs.createRectangleROI(0, 0, server.getWidth(), server.getHeight(), ImagePlane.getPlane(settings.z(), settings.t()));
        PathObject whole = PathObjects.createAnnotationObject(roi);
        whole.setName("SegTME whole image");
        imageData.getHierarchy().addObject(whole);
        return whole;
    }
}
