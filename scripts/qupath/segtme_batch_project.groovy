/**
 * SegTME: Detect TME on every image of a QuPath project ("Run for project").
 *
 * Step by step
 *  1. Start the server on the analysis machine:   segtme serve --port 50051
 *     (remote server: add --host 0.0.0.0 --token-file token.txt --tls-cert server.pem --tls-key server.key,
 *     set SEGTME_TOKEN for QuPath and caFile below)
 *  2. In QuPath 0.6 with the SegTME extension installed, open the project.
 *  3. Draw or import the annotations to analyse on each image (optionally give them a class and set
 *     targets: 'class:NAME' below).
 *  4. Automate > Script editor > File > Open... this file.
 *  5. Adjust the OPTIONS below (server address, model, output type, which annotations).
 *  6. Run > Run for project, choose the images, Run.
 *     Each image: nuclei are placed under their annotation, TME measurements are written to the
 *     annotation, tokens + narrative go to its description; the image data is saved by QuPath.
 *     Re-running replaces the previous SegTME objects of an annotation, wherever they moved (no duplicates).
 *  7. Export the results with segtme_export_measurements.groovy (same folder).
 *
 * Which annotations (docs/qupath.md, "Which annotations are analysed"): area annotations SegTME did not make;
 * one nested inside another chosen one is analysed through the outer one (no region twice). An image where the
 * rule finds nothing is skipped (ifNone: 'skip'; 'whole-image' analyses the whole image instead). An image
 * without a pixel size fails with a clear message (set it under the Image tab). A failure on one annotation
 * leaves that annotation unchanged; the annotations finished before it keep their results.
 * (The step Detect TME records in the Workflow tab is the same call; it can be run for a project as it is.)
 */
import qupath.ext.segtme.SegTME

// ---- options ----------------------------------------------------------------------------------
def OPTIONS = [
    server        : 'localhost:50051',  // host:port of `segtme serve`
    tls           : false,
    caFile        : '',                 // PEM that signs the server certificate (implies tls); '' = system roots
    model         : '',                 // '' = the server's default model
    tileSize      : 0,                  // working px; 0 = the model's
    overlap       : -1,                 // working px; -1 = the model's
    output        : 'detections',       // 'detections' or 'cells'
    cellExpansion : 5.0,                // µm, cells only
    narrative     : true,
    targets       : 'all',              // 'all', 'top-level' or 'class:NAME'
    ifNone        : 'skip',             // 'skip', 'error' or 'whole-image'
]                                       // bearer token: environment variable SEGTME_TOKEN (not stored here)
// -------------------------------------------------------------------------------------------------

def imageData = getCurrentImageData()
def name = getProjectEntry()?.getImageName() ?: imageData.getServer().getMetadata().getName()
def results = SegTME.detectTME(imageData, OPTIONS)
if (results.isEmpty())
    println "${name}: no annotations to analyse (targets '${OPTIONS.targets}'), skipped"
results.each { r ->
    println "${name}: ${r.annotation()} -> ${r.nuclei()} nuclei; tokens ${r.tokens().join(' ')}"
}
