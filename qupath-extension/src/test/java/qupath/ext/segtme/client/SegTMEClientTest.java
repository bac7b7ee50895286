package qupath.ext.segtme.client;

import io.grpc.ManagedChannel;
import io.grpc.inprocess.InProcessChannelBuilder;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

import java.awt.image.BufferedImage;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.CancellationException;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.*;

/** The client core against an in-process fake server (no network, no Python). */
class SegTMEClientTest {

    private final List<AutoCloseable> toClose = new ArrayList<>();

    @AfterEach
    void closeAll() throws Exception {
        for (AutoCloseable c : toClose)
            c.close();
    }

    /** Nucleus centres on a 37 px grid, offset so that many fall close to tile seams. */
    private static List<double[]> grid(int w, int h) {
        List<double[]> out = new ArrayList<>();
        for (double y = 5.5; y < h; y += 37)
            for (double x = 3.25; x < w; x += 37)
                out.add(new double[] {x, y});
        return out;
    }

    /** A synthetic image whose pixel (x, y) encodes its coordinates: R = x % 256, G = y % 256, B = (x / 256) * 16 + y / 256. */
    private static BufferedImage codedImage(int w, int h) {
        BufferedImage img = new BufferedImage(w, h, BufferedImage.TYPE_INT_RGB);
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                img.setRGB(x, y, ((x & 255) << 16) | ((y & 255) << 8) | (((x >> 8) * 16 + (y >> 8)) & 255));
        return img;
    }

    private FakeSegTMEServer fake(double modelMpp, int tile, int overlap, List<double[]> centres, String name) throws Exception {
        FakeSegTMEServer f = new FakeSegTMEServer(modelMpp, tile, overlap, centres).start(name);
        toClose.add(f);
        return f;
    }

    private SegTMEClient client(String name, ClientConfig.Builder cfg) {
        ManagedChannel ch = InProcessChannelBuilder.forName(name).build();
        toClose.add(ch::shutdownNow);
        SegTMEClient c = new SegTMEClient(ch, cfg.build());
        toClose.add(c);
        return c;
    }

    private static ClientConfig.Builder cfg() {
        return ClientConfig.builder("in-process").initialBackoff(Duration.ofMillis(50)).maxBackoff(Duration.ofMillis(200));
    }

    @Test
    void streamsThePlanAndCollectsEveryNucleusOnce() throws Exception {
        String name = "fake-" + UUID.randomUUID();
        int w = 700, h = 500;
        List<double[]> centres = grid(w, h);
        FakeSegTMEServer server = fake(0.5, 64, 16, centres, name);
        SegTMEClient client = client(name, cfg());

        var region = new AnnotationRegion(40, 30, 600, 420, Geometries.rectangle(40, 30, 600, 420).toString(), "ann-1", 0.25);
        List<JobProgress> seen = new CopyOnWriteArrayList<>();
        DetectionResult r = client.detectTME(new BufferedImageTileSource(codedImage(w, h)), region,
                DetectOptions.builder().build(), seen::add, null);

        // the client sent exactly the planned tiles, in order, with the planned cores and downsample
        TilePlanner.Plan plan = TilePlanner.plan(40, 30, 600, 420, w, h, 0.25, 0.5, 64, 16);
        assertEquals(plan.tiles(), r.plan().tiles());
        assertTrue(plan.tiles().size() > 20, "the test should cross many seams");
        assertEquals(plan.tiles().size(), server.tilesReceived.size());
        for (int k = 0; k < plan.tiles().size(); k++) {
            var want = plan.tiles().get(k);
            var got = server.tilesReceived.get(k);
            assertEquals(k, got.getIndex());
            assertEquals(want.x(), got.getX());
            assertEquals(want.y(), got.getY());
            assertEquals(2.0, got.getDownsample());
            assertEquals(Math.round(want.width() / 2.0), got.getWidth());
            assertEquals(want.coreX0(), got.getCore().getX());
            assertEquals(want.coreY1() - want.coreY0(), got.getCore().getHeight());
        }
        assertEquals(plan.tiles().size(), server.lastConfig.getExpectedTiles());
        assertEquals("ann-1", server.lastConfig.getAnnotationId());
        assertEquals(0.25, server.lastConfig.getImageMpp());
        assertEquals(FakeSegTMEServer.MODEL, server.lastConfig.getModel());

        // every centre inside the annotation came back exactly once, at its full-res position
        Set<String> expected = new HashSet<>();
        for (double[] c : centres)
            if (c[0] >= 40 && c[0] < 640 && c[1] >= 30 && c[1] < 450)
                expected.add(c[0] + "," + c[1]);
        Set<String> got = new HashSet<>();
        for (NucleusFeature n : r.nuclei())
            assertTrue(got.add(n.centroidX() + "," + n.centroidY()), "duplicate nucleus at " + n.centroidX() + "," + n.centroidY());
        assertEquals(expected, got);
        assertEquals("Tumor", r.nuclei().get(0).className());
        assertArrayEquals(new int[] {200, 0, 0}, r.nuclei().get(0).color());
        assertEquals(36 * 0.25 * 0.25, r.nuclei().get(0).measurements().get("Nucleus: Area µm^2"), 1e-12);

        // the report was converted
        assertEquals(expected.size(), r.report().nucleiTotal());
        assertEquals((double) expected.size(), r.report().measurements().get("SegTME: Nuclei count"));
        assertEquals(List.of("[FAKE_TOKEN]"), r.report().tokens());
        assertEquals("fake narrative", r.report().narrative());
        assertEquals(expected.size(), r.report().reportJson().getAsJsonObject("raw_data").get("n").getAsInt());

        // progress: monotonic, reaches 1 exactly at the end, listener saw the same list
        assertEquals("connecting", seen.get(0).stage());
        double prev = -1;
        for (JobProgress p : seen) {
            assertTrue(p.fraction() >= prev, "progress went backwards: " + seen);
            prev = p.fraction();
        }
        assertEquals(1.0, seen.get(seen.size() - 1).fraction());
        assertEquals(1, seen.stream().filter(p -> p.fraction() >= 1.0).count(), "only the final update is at 100 %");
    }

    @Test
    void tilePixelsMatchTheImageForEveryEncoding() throws Exception {
        for (var enc : DetectOptions.Encoding.values()) {
            String name = "fake-" + UUID.randomUUID();
            BufferedImage img = codedImage(300, 200);
            // model MPP == image MPP: tiles are sent at downsample 1, so pixels must be exact (JPEG: close)
            FakeSegTMEServer server = fake(0.5, 96, 32, List.of(), name);
            SegTMEClient client = client(name, cfg());
            client.detectTME(new BufferedImageTileSource(img), new AnnotationRegion(10, 20, 250, 150, null, null, 0.5),
                    DetectOptions.builder().encoding(enc).build(), null, null);
            assertFalse(server.tilesReceived.isEmpty());
            double errSum = 0;
            long n = 0;
            for (int k = 0; k < server.tilesReceived.size(); k++) {
                var t = server.tilesReceived.get(k);
                BufferedImage got = server.tileImages.get(k);
                for (int v = 0; v < t.getHeight(); v += 7) {
                    for (int u = 0; u < t.getWidth(); u += 5) {
                        int a = img.getRGB((int) t.getX() + u, (int) t.getY() + v), b = got.getRGB(u, v);
                        for (int s = 0; s <= 16; s += 8) {
                            int err = Math.abs(((a >> s) & 255) - ((b >> s) & 255));
                            if (enc != DetectOptions.Encoding.JPEG)
                                assertEquals(0, err, enc + " tile " + k + " pixel " + u + "," + v);
                            errSum += err;
                            n++;
                        }
                    }
                }
            }
            // JPEG is lossy: only the mean error is bounded (a misplaced tile would be off by tens of levels)
            assertTrue(errSum / n < 6, enc + " mean abs error " + errSum / n);
        }
    }

    @Test
    void cancellingStopsTheServerSideStream() throws Exception {
        String name = "fake-" + UUID.randomUUID();
        FakeSegTMEServer server = fake(0.5, 64, 16, grid(700, 500), name);
        server.delayPerTileMs = 30;
        SegTMEClient client = client(name, cfg());
        CancelSignal cancel = new CancelSignal();
        var region = new AnnotationRegion(0, 0, 700, 500, null, "a", 0.25);
        int planned = TilePlanner.plan(0, 0, 700, 500, 700, 500, 0.25, 0.5, 64, 16).tiles().size();
        assertThrows(CancellationException.class, () -> client.detectTME(new BufferedImageTileSource(codedImage(700, 500)),
                region, DetectOptions.builder().build(), p -> { if (p.tilesDone() >= 2) cancel.cancel(); }, cancel));
        assertTrue(server.serverSawCancel.await(5, TimeUnit.SECONDS), "the server never saw the cancellation");
        assertTrue(server.tilesReceived.size() < planned, "all tiles were streamed despite the cancel");
    }

    @Test
    void serverFailureMidStreamYieldsNoPartialResult() throws Exception {
        String name = "fake-" + UUID.randomUUID();
        FakeSegTMEServer server = fake(0.5, 64, 16, grid(400, 400), name);
        server.failAfterTiles = 3;
        SegTMEClient client = client(name, cfg());
        var e = assertThrows(SegTMEException.class, () -> client.detectTME(new BufferedImageTileSource(codedImage(400, 400)),
                new AnnotationRegion(0, 0, 400, 400, null, null, 0.25), DetectOptions.builder().build(), null, null));
        assertEquals("INTERNAL", e.code());
        assertTrue(e.getMessage().contains("model crashed"), e.getMessage());
        assertEquals(1, server.detectCalls.get(), "a failure after the stream started must not be retried");
    }

    @Test
    void aStreamWithoutReportIsAnError() throws Exception {
        String name = "fake-" + UUID.randomUUID();
        FakeSegTMEServer server = fake(0.5, 64, 16, grid(200, 200), name);
        server.omitReport = true;
        SegTMEClient client = client(name, cfg());
        var e = assertThrows(SegTMEException.class, () -> client.detectTME(new BufferedImageTileSource(codedImage(200, 200)),
                new AnnotationRegion(0, 0, 200, 200, null, null, 0.25), DetectOptions.builder().build(), null, null));
        assertEquals("PROTOCOL", e.code());
    }

    @Test
    void retriesConnectionFailuresWithBackoff() throws Exception {
        String name = "late-" + UUID.randomUUID();
        SegTMEClient client = client(name, cfg().connectAttempts(30));
        // the server comes up only after the client has started trying
        Thread starter = new Thread(() -> {
            try {
                Thread.sleep(400);
                fake(0.5, 64, 16, grid(200, 200), name);
            } catch (Exception e) {
                throw new RuntimeException(e);
            }
        });
        starter.start();
        assertEquals(FakeSegTMEServer.MODEL, client.getInfo().getDefaultModel());
        starter.join();

        // a stream refused with UNAVAILABLE before anything was received is retried as a whole
        String name2 = "warming-" + UUID.randomUUID();
        FakeSegTMEServer server = fake(0.5, 64, 16, grid(200, 200), name2);
        server.failFirstDetectCalls = 2;
        DetectionResult r = client(name2, cfg()).detectTME(new BufferedImageTileSource(codedImage(200, 200)),
                new AnnotationRegion(0, 0, 200, 200, null, null, 0.25), DetectOptions.builder().build(), null, null);
        assertEquals(3, server.detectCalls.get());
        assertEquals(r.report().nucleiTotal(), r.nuclei().size());
        assertFalse(r.nuclei().isEmpty());
    }

    @Test
    void givesUpAfterTheConfiguredAttempts() {
        SegTMEClient client = client("nobody-" + UUID.randomUUID(), cfg().connectAttempts(3));
        var e = assertThrows(SegTMEException.class, client::getInfo);
        assertEquals("UNAVAILABLE", e.code());
        assertTrue(e.getMessage().contains("3 attempt"), e.getMessage());
    }

    @Test
    void sendsTheBearerToken() throws Exception {
        String name = "auth-" + UUID.randomUUID();
        FakeSegTMEServer server = fake(0.5, 64, 16, List.of(), name);
        server.requiredToken = "s3cret";
        var e = assertThrows(SegTMEException.class, () -> client(name, cfg()).getInfo());
        assertEquals("UNAUTHENTICATED", e.code());
        assertEquals(FakeSegTMEServer.MODEL, client(name, cfg().bearerToken("s3cret")).getInfo().getDefaultModel());
    }

    @Test
    void honoursTheCallDeadline() throws Exception {
        String name = "slow-" + UUID.randomUUID();
        FakeSegTMEServer server = fake(0.5, 64, 16, List.of(), name);
        server.getInfoDelayMs = 2000;
        var e = assertThrows(SegTMEException.class, () -> client(name, cfg().callTimeout(Duration.ofMillis(200))).getInfo());
        assertEquals("DEADLINE_EXCEEDED", e.code());
    }

    @Test
    void refusesAnnotationsOutsideTheImageAndUnknownModels() throws Exception {
        String name = "fake-" + UUID.randomUUID();
        fake(0.5, 64, 16, List.of(), name);
        SegTMEClient client = client(name, cfg());
        var src = new BufferedImageTileSource(codedImage(100, 100));
        assertThrows(IllegalArgumentException.class, () -> client.detectTME(src,
                new AnnotationRegion(50, 50, 100, 10, null, null, 0.25), DetectOptions.builder().build(), null, null));
        var e = assertThrows(SegTMEException.class, () -> client.detectTME(src,
                new AnnotationRegion(0, 0, 10, 10, null, null, 0.25), DetectOptions.builder().model("nope").build(), null, null));
        assertEquals("NOT_FOUND", e.code());
        assertThrows(IllegalArgumentException.class, () -> new AnnotationRegion(0, 0, 10, 10, null, null, Double.NaN));
    }

    /** PAGET models: tissue annotations (objectType "annotation") come back apart from the nuclei. */
    @Test
    void parsesTissueAnnotationsSeparatelyFromNuclei() throws Exception {
        String name = "fake-" + UUID.randomUUID();
        FakeSegTMEServer server = fake(0.5, 64, 16, grid(300, 200), name);
        // Epithelium: a MultiPolygon of a 100x80 square with a 20x10 hole plus a 10x10 square; Stroma: a rectangle
        var epiA = Geometries.rectangle(10, 10, 100, 80);
        epiA.getAsJsonArray("coordinates").add(Geometries.rectangle(30, 30, 20, 10).getAsJsonArray("coordinates").get(0));
        var epi = new com.google.gson.JsonObject();
        epi.addProperty("type", "MultiPolygon");
        var polys = new com.google.gson.JsonArray();
        polys.add(epiA.getAsJsonArray("coordinates"));
        polys.add(Geometries.rectangle(200, 150, 10, 10).getAsJsonArray("coordinates"));
        epi.add("coordinates", polys);
        server.tissue = List.of(
                FakeSegTMEServer.tissueFeature("Epithelium", new int[] {255, 102, 102}, epi, 8000 - 200 + 100, 0.25),
                FakeSegTMEServer.tissueFeature("Stroma", new int[] {80, 160, 80}, Geometries.rectangle(120, 10, 150, 100), 15000, 0.25));
        SegTMEClient client = client(name, cfg());
        DetectionResult r = client.detectTME(new BufferedImageTileSource(codedImage(300, 200)),
                new AnnotationRegion(0, 0, 300, 200, null, "ann-t", 0.25), DetectOptions.builder().build(), null, null);

        assertEquals(r.report().nucleiTotal(), r.nuclei().size());
        assertFalse(r.nuclei().isEmpty());
        for (NucleusFeature n : r.nuclei())
            assertEquals("detection", n.objectType());
        assertEquals(2, r.tissue().size());
        TissueFeature e = r.tissue().get(0), s = r.tissue().get(1);
        assertEquals("Epithelium", e.className());
        assertEquals("PAGET Epithelium", e.name());
        assertArrayEquals(new int[] {255, 102, 102}, e.color());
        assertEquals("MultiPolygon", e.geometry().get("type").getAsString());
        assertEquals(8000 - 200 + 100, e.areaPx(), 1e-9);
        assertEquals(e.areaPx(), e.measurements().get("Area px^2"), 1e-9);
        assertEquals(e.areaPx() * 0.25 * 0.25, e.measurements().get("Area µm^2"), 1e-9);
        assertEquals("Stroma", s.className());
        assertEquals(15000, s.areaPx(), 1e-9);
        assertEquals(2, r.report().reportJson().get("tissue_annotations_total").getAsInt());
        // the raw features are kept for QuPath's own GeoJSON reader
        assertEquals("annotation", e.feature().getAsJsonObject("properties").get("objectType").getAsString());

        // nucleus models send no tissue: empty list, not null
        server.tissue = List.of();
        DetectionResult plain = client.detectTME(new BufferedImageTileSource(codedImage(300, 200)),
                new AnnotationRegion(0, 0, 300, 200, null, "ann-n", 0.25), DetectOptions.builder().build(), null, null);
        assertTrue(plain.tissue().isEmpty());
        assertEquals(r.nuclei().size(), plain.nuclei().size());
    }

    @Test
    void missingTissueAnnotationsAreAProtocolError() throws Exception {
        String name = "fake-" + UUID.randomUUID();
        FakeSegTMEServer server = fake(0.5, 64, 16, grid(200, 200), name);
        server.tissue = List.of(FakeSegTMEServer.tissueFeature("Stroma", new int[] {80, 160, 80},
                Geometries.rectangle(0, 0, 50, 50), 2500, 0.25));
        server.tissueTotalInReport = 2; // the report announces one more than was sent
        SegTMEClient client = client(name, cfg());
        var e = assertThrows(SegTMEException.class, () -> client.detectTME(new BufferedImageTileSource(codedImage(200, 200)),
                new AnnotationRegion(0, 0, 200, 200, null, null, 0.25), DetectOptions.builder().build(), null, null));
        assertEquals("PROTOCOL", e.code());
        assertTrue(e.getMessage().contains("tissue annotations"), e.getMessage());
        // an unclassified annotation is not a tissue region
        var f = FakeSegTMEServer.tissueFeature("X", new int[] {1, 2, 3}, Geometries.rectangle(0, 0, 5, 5), 25, 0.25);
        f.getAsJsonObject("properties").remove("classification");
        assertThrows(IllegalArgumentException.class, () -> TissueFeature.parse(f));
    }

    @Test
    void centroidOfPolygonsWithHoles() {
        var square = Geometries.rectangle(0, 0, 10, 10);
        double[] c = Geometries.centroidAndArea(square);
        assertArrayEquals(new double[] {5, 5, 100}, c, 1e-12);
        // a 10x10 square with a 2x2 hole in its top-left corner
        var withHole = Geometries.rectangle(0, 0, 10, 10);
        withHole.getAsJsonArray("coordinates").add(Geometries.rectangle(0, 0, 2, 2).getAsJsonArray("coordinates").get(0));
        double[] h = Geometries.centroidAndArea(withHole);
        assertEquals(96, h[2], 1e-12);
        assertEquals((100 * 5 - 4 * 1) / 96.0, h[0], 1e-12);
    }
}
