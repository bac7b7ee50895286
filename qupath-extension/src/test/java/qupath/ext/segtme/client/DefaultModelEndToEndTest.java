package qupath.ext.segtme.client;

import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;
import org.locationtech.jts.geom.Coordinate;
import org.locationtech.jts.geom.GeometryFactory;

import javax.imageio.ImageIO;
import java.awt.image.BufferedImage;
import java.awt.image.Raster;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.List;
import java.util.Set;

import static org.junit.jupiter.api.Assertions.*;

/**
 * The client against the real server running the <b>shipped model</b>: {@code segtme serve --model default}
 * ($SEGTME_CMD, default &lt;repo&gt;/.venv/bin/segtme), over the concave annotation of {@link EndToEndServerTest} on a
 * MoNuSeg image, with small tiles so the annotation spans several of them.
 * Tile size (working px at the model's MPP): $SEGTME_E2E_TILE_SIZE or -Dsegtme.e2e.tileSize (default 256).
 * Missing data / server / weights: skipped locally, FAILS under CI=true.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class DefaultModelEndToEndTest {

    private ServerProcess server;
    private SegTMEClient client;
    private BufferedImage image;
    private Raster labels;
    private double mpp;
    private int tileSize;

    static int tileSizeOption() {
        String v = System.getProperty("segtme.e2e.tileSize", System.getenv("SEGTME_E2E_TILE_SIZE"));
        int t = v == null || v.isBlank() ? 256 : Integer.parseInt(v.strip());
        if (t < 64)
            throw new IllegalArgumentException("SEGTME_E2E_TILE_SIZE must be >= 64, got " + t);
        return t;
    }

    @BeforeAll
    void start() throws Exception {
        tileSize = tileSizeOption();
        Path data = TestEnv.dataDir().resolve("monuseg-train");
        TestEnv.require(Files.isRegularFile(data.resolve("index.json")), "MoNuSeg data not found at " + data);
        JsonObject item = JsonParser.parseString(Files.readString(data.resolve("index.json"))).getAsJsonArray().get(0).getAsJsonObject();
        image = ImageIO.read(data.resolve(item.get("image").getAsString()).toFile());
        labels = ImageIO.read(data.resolve(item.get("label").getAsString()).toFile()).getRaster();
        mpp = item.get("mpp").getAsDouble();
        String[] segtme = TestEnv.serverCommand();
        TestEnv.require(Files.isExecutable(Path.of(segtme[0])), "segtme not found at " + segtme[0]);
        Path weights = TestEnv.repo().resolve("python/segtme/models/weights/default.safetensors");
        TestEnv.require(Files.isRegularFile(weights), "the shipped default model is missing: " + weights);
        List<String> cmd = new ArrayList<>(Arrays.asList(segtme));
        cmd.addAll(List.of("serve", "--model", "default", "--port", "0", "--device", "cpu", "--no-warmup"));
        server = new ServerProcess(cmd, 300);
        client = new SegTMEClient(ClientConfig.builder("127.0.0.1:" + server.port).build());
    }

    @AfterAll
    void stop() throws Exception {
        if (client != null)
            client.close();
        if (server != null)
            server.close();
    }

    @Test
    void shippedModelOverAnAnnotationSpanningSeveralTiles() {
        assertTrue(client.listModels().stream().anyMatch(m -> m.getName().equals("default")), "the server lists no 'default' model");
        GeometryFactory gf = new GeometryFactory();
        var ann = EndToEndServerTest.annotationPolygon(gf);
        var env = ann.getEnvelopeInternal();
        long bx = (long) env.getMinX(), by = (long) env.getMinY();
        var region = new AnnotationRegion(bx, by, (long) Math.ceil(env.getMaxX()) - bx, (long) Math.ceil(env.getMaxY()) - by,
                EndToEndServerTest.annotationGeoJson(), "default-e2e", mpp);
        DetectionResult r = client.detectTME(new BufferedImageTileSource(image), region,
                DetectOptions.builder().model("default").tileSize(tileSize).narrative(true).build(), null, null);
        var plan = r.plan();
        System.out.printf("default-model e2e: tile %d -> %d tiles (%dx%d, d=%.4f), %d nuclei, tokens %s%n", tileSize,
                plan.tiles().size(), plan.nx(), plan.ny(), plan.downsample(), r.nuclei().size(), r.report().tokens());
        assertEquals("default", r.modelName());
        assertTrue(plan.tiles().size() >= 4, "the annotation must span several tiles (" + plan.tiles().size() + "); lower SEGTME_E2E_TILE_SIZE");
        long widest = plan.tiles().stream().mapToLong(t -> t.width()).max().orElse(0);
        assertTrue(Math.abs(widest / plan.downsample() - tileSize) <= 2, "the requested tile size was not used: "
                + widest + " full-res px at d=" + plan.downsample());
        assertTrue(r.nuclei().size() >= 50, "too few nuclei from the shipped model on a MoNuSeg image: " + r.nuclei().size());
        assertEquals(r.nuclei().size(), r.report().nucleiTotal());
        assertFalse(r.report().measurements().isEmpty());
        assertFalse(r.report().tokens().isEmpty());
        int hits = 0;
        Set<Integer> owners = new HashSet<>();
        for (NucleusFeature n : r.nuclei()) {
            assertTrue(ann.covers(gf.createPoint(new Coordinate(n.centroidX(), n.centroidY()))), "centroid outside the annotation");
            owners.add(plan.ownerIndex(n.centroidX(), n.centroidY()));
            assertNotNull(n.className(), "unclassified nucleus");
            int x = (int) n.centroidX(), y = (int) n.centroidY();
            if (labels.getSample(x, y, 0) > 0)
                hits++;
        }
        double hit = hits / (double) r.nuclei().size();
        System.out.printf("default-model e2e: %.3f of centroids on a ground-truth nucleus; nuclei from %d tiles%n", hit, owners.size());
        assertTrue(hit >= 0.6, "shipped-model centroids do not land on ground-truth nuclei: " + hit);
        assertTrue(owners.size() >= 4, "nuclei came from fewer than 4 tiles: " + owners);
    }
}
