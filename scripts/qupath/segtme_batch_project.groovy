/**
 * SegTME: Detect TME for every annotation of every image of a QuPath project ("Run for project").
 *
 * Step by step
 *  1. Start the server on the analysis machine:   segtme serve --port 50051
 *     (remote server: add --host 0.0.0.0 --token-file token.txt, and set SEGTME_TOKEN for QuPath)
 *  2. In QuPath 0.6 with the SegTME extension installed, open the project.
 *  3. Draw or import the annotations to analyse on each image (optionally give them a class,
 *     then set ONLY_CLASS below to analyse only those).
 *  4. Automate > Script editor > File > Open... this file.
 *  5. Adjust the OPTIONS below (server address, model, output type).
 *  6. Run > Run for project, choose the images, Run.
 *     Each image: nuclei are placed under their annotation, TME measurements are written to the
 *     annotation, tokens + narrative go to its description; the image data is saved by QuPath.
 *     Re-running replaces the previous SegTME nuclei of an annotation (no duplicates).
 *  7. Export the results with segtme_export_measurements.groovy (same folder).
 *
 * An image without annotations is skipped; an image without a pixel size fails with a clear message
 * (set it under the Image tab). Failures on one annotation leave that annotation unchanged.
 */
import qupath.ext.segtme.SegTME

// ---- options ----------------------------------------------------------------------------------
def OPTIONS = [
    server    : 'localhost:50051',  // host:port of `segtme serve`
    tls       : false,
    model     : '',                 // '' = the server's default model
    tileSize  : 0,                  // working px; 0 = the model's
    overlap   : -1,                 // working px; -1 = the model's
    output    : 'detections',       // 'detections' or 'cells'
    narrative : true,
]                                   // bearer token: environment variable SEGTME_TOKEN (not stored here)
def ONLY_CLASS = null               // e.g. 'Tumor' to analyse only annotations of that class
// -------------------------------------------------------------------------------------------------

def imageData = getCurrentImageData()
def name = getProjectEntry()?.getImageName() ?: imageData.getServer().getMetadata().getName()
def annotations = getAnnotationObjects().findAll {
    it.hasROI() && it.getROI().isArea() && (ONLY_CLASS == null || it.getPathClass()?.toString() == ONLY_CLASS)
}
if (annotations.isEmpty()) {
    println "${name}: no annotations to analyse, skipped"
    return
}
def results = SegTME.detectTME(imageData, annotations, OPTIONS)
results.each { r ->
    println "${name}: ${r.annotation()} -> ${r.nuclei()} nuclei; tokens ${r.tokens().join(' ')}"
}
