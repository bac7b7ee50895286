package qupath.ext.segtme.client;

import com.google.gson.JsonArray;
import com.google.gson.JsonObject;
import io.grpc.Metadata;
import io.grpc.Server;
import io.grpc.ServerCall;
import io.grpc.ServerCallHandler;
import io.grpc.ServerInterceptor;
import io.grpc.ServerInterceptors;
import io.grpc.Status;
import io.grpc.inprocess.InProcessServerBuilder;
import io.grpc.stub.ServerCallStreamObserver;
import io.grpc.stub.StreamObserver;
import qupath.ext.segtme.client.proto.ClassDef;
import qupath.ext.segtme.client.proto.DetectRequest;
import qupath.ext.segtme.client.proto.DetectResponse;
import qupath.ext.segtme.client.proto.GetInfoRequest;
import qupath.ext.segtme.client.proto.JobConfig;
import qupath.ext.segtme.client.proto.ListModelsRequest;
import qupath.ext.segtme.client.proto.ListModelsResponse;
import qupath.ext.segtme.client.proto.ModelInfo;
import qupath.ext.segtme.client.proto.NucleiBatch;
import qupath.ext.segtme.client.proto.PixelEncoding;
import qupath.ext.segtme.client.proto.Progress;
import qupath.ext.segtme.client.proto.SegTMEGrpc;
import qupath.ext.segtme.client.proto.ServerInfo;
import qupath.ext.segtme.client.proto.TMEReport;
import qupath.ext.segtme.client.proto.Tile;

import javax.imageio.ImageIO;
import java.awt.image.BufferedImage;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.UUID;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * An in-process fake of the SegTME service for client tests. Its "detector" knows a fixed list of
 * nucleus centres (full-res px): every tile reports the centres that fall inside the tile's
 * region AND its core (the ownership rule) and inside the annotation's bounds, as 6x6 px squares.
 * It records what it received, so tests can check what the client sent.
 */
final class FakeSegTMEServer extends SegTMEGrpc.SegTMEImplBase implements AutoCloseable {

    static final String MODEL = "fake-model";
    final double modelMpp;
    final int tileSize;
    final int overlap;
    final List<double[]> centres;

    // behaviour switches
    volatile int failFirstDetectCalls = 0;     // answer UNAVAILABLE to the first N DetectTME calls
    volatile int failAfterTiles = -1;          // INTERNAL after this many tiles
    volatile boolean omitReport = false;       // complete without a TMEReport
    volatile long delayPerTileMs = 0;          // slow "inference"
    volatile long getInfoDelayMs = 0;          // slow GetInfo (deadline test)
    volatile String requiredToken = null;      // bearer token required on every call
    volatile List<JsonObject> tissue = List.of(); // PAGET-like tissue annotations sent after the nuclei
    volatile int tissueTotalInReport = -1;     // report_json "tissue_annotations_total" (-1: tissue.size(); omitted if no tissue)

    // observations
    final List<Tile> tilesReceived = Collections.synchronizedList(new ArrayList<>());
    final List<BufferedImage> tileImages = Collections.synchronizedList(new ArrayList<>());
    volatile JobConfig lastConfig;
    final AtomicInteger detectCalls = new AtomicInteger();
    final CountDownLatch serverSawCancel = new CountDownLatch(1);
    final CountDownLatch jobEnded = new CountDownLatch(1);

    private Server server;

    FakeSegTMEServer(double modelMpp, int tileSize, int overlap, List<double[]> centres) {
        this.modelMpp = modelMpp;
        this.tileSize = tileSize;
        this.overlap = overlap;
        this.centres = centres;
    }

    FakeSegTMEServer start(String name) throws IOException {
        ServerInterceptor auth = new ServerInterceptor() {
            @Override
            public <Q, R> ServerCall.Listener<Q> interceptCall(ServerCall<Q, R> call, Metadata headers, ServerCallHandler<Q, R> next) {
                String want = requiredToken;
                String got = headers.get(Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER));
                if (want != null && !("Bearer " + want).equals(got)) {
                    call.close(Status.UNAUTHENTICATED.withDescription("invalid bearer token"), new Metadata());
                    return new ServerCall.Listener<>() {};
                }
                return next.startCall(call, headers);
            }
        };
        server = InProcessServerBuilder.forName(name).addService(ServerInterceptors.intercept(this, auth)).build().start();
        return this;
    }

    @Override
    public void close() {
        if (server != null)
            server.shutdownNow();
    }

    @Override
    public void getInfo(GetInfoRequest request, StreamObserver<ServerInfo> out) {
        sleep(getInfoDelayMs);
        out.onNext(ServerInfo.newBuilder().setVersion("fake").setDevice("cpu").addModelsLoaded(MODEL).setDefaultModel(MODEL).build());
        out.onCompleted();
    }

    @Override
    public void listModels(ListModelsRequest request, StreamObserver<ListModelsResponse> out) {
        out.onNext(ListModelsResponse.newBuilder().addModels(ModelInfo.newBuilder().setName(MODEL).setMpp(modelMpp)
                .setTileSize(tileSize).setTileOverlap(overlap)
                .addClasses(ClassDef.newBuilder().setId(1).setName("Tumor").addColor(200).addColor(0).addColor(0))).build());
        out.onCompleted();
    }

    @Override
    public StreamObserver<DetectRequest> detectTME(StreamObserver<DetectResponse> responses) {
        ServerCallStreamObserver<DetectResponse> out = (ServerCallStreamObserver<DetectResponse>) responses;
        int call = detectCalls.incrementAndGet();
        if (call <= failFirstDetectCalls) {
            out.onError(Status.UNAVAILABLE.withDescription("fake: warming up").asRuntimeException());
            return new StreamObserver<>() {
                public void onNext(DetectRequest v) {}
                public void onError(Throwable t) {}
                public void onCompleted() {}
            };
        }
        out.setOnCancelHandler(() -> { serverSawCancel.countDown(); jobEnded.countDown(); });
        return new StreamObserver<>() {
            JobConfig config;
            int tiles;
            long nuclei;
            boolean closed;

            @Override
            public void onNext(DetectRequest req) {
                if (closed)
                    return;
                switch (req.getMsgCase()) {
                    case CONFIG -> { config = req.getConfig(); lastConfig = config; }
                    case TILE -> onTile(req.getTile());
                    case END -> finish();
                    default -> { }
                }
            }

            private void onTile(Tile t) {
                if (config == null) {
                    fail(Status.INVALID_ARGUMENT.withDescription("tile before config"));
                    return;
                }
                tilesReceived.add(t);
                tileImages.add(decode(t));
                sleep(delayPerTileMs);
                if (out.isCancelled())
                    return;
                tiles++;
                if (failAfterTiles >= 0 && tiles > failAfterTiles) {
                    fail(Status.INTERNAL.withDescription("fake: model crashed"));
                    return;
                }
                var core = t.getCore();
                JsonArray features = new JsonArray();
                for (double[] c : centres) {
                    boolean inRegion = c[0] >= t.getX() && c[0] < t.getX() + t.getWidth() * t.getDownsample()
                            && c[1] >= t.getY() && c[1] < t.getY() + t.getHeight() * t.getDownsample();
                    boolean inCore = c[0] >= core.getX() && c[0] < core.getX() + core.getWidth()
                            && c[1] >= core.getY() && c[1] < core.getY() + core.getHeight();
                    if (inRegion && inCore)
                        features.add(feature(c[0], c[1], config.getImageMpp()));
                }
                nuclei += features.size();
                JsonObject fc = new JsonObject();
                fc.addProperty("type", "FeatureCollection");
                fc.add("features", features);
                out.onNext(DetectResponse.newBuilder().setNuclei(NucleiBatch.newBuilder().setTileIndex(t.getIndex())
                        .setCount(features.size()).setFeaturesGeojson(fc.toString())).build());
                out.onNext(DetectResponse.newBuilder().setProgress(Progress.newBuilder().setTilesDone(tiles)
                        .setTilesExpected(config.getExpectedTiles()).setNucleiSoFar(nuclei)
                        .setFraction(0.9 * tiles / Math.max(1, config.getExpectedTiles())).setStage("segmenting")).build());
            }

            private void finish() {
                if (closed)
                    return;
                closed = true;
                List<JsonObject> t = tissue;
                if (!t.isEmpty()) {
                    // as the real server: one batch of annotation features, tile_index -1, after the nuclei
                    JsonArray features = new JsonArray();
                    t.forEach(features::add);
                    JsonObject fc = new JsonObject();
                    fc.addProperty("type", "FeatureCollection");
                    fc.add("features", features);
                    out.onNext(DetectResponse.newBuilder().setNuclei(NucleiBatch.newBuilder().setTileIndex(-1)
                            .setCount(t.size()).setFeaturesGeojson(fc.toString())).build());
                }
                String tissueTotal = t.isEmpty() ? ""
                        : ",\"tissue_annotations_total\":" + (tissueTotalInReport >= 0 ? tissueTotalInReport : t.size());
                out.onNext(DetectResponse.newBuilder().setProgress(Progress.newBuilder().setTilesDone(tiles)
                        .setTilesExpected(config.getExpectedTiles()).setNucleiSoFar(nuclei).setFraction(1.0).setStage("done")).build());
                if (!omitReport)
                    out.onNext(DetectResponse.newBuilder().setReport(TMEReport.newBuilder()
                            .setNarrative("fake narrative").addTokens("[FAKE_TOKEN]")
                            .putMeasurements("SegTME: Nuclei count", nuclei)
                            .setReportJson("{\"raw_data\":{\"n\":" + nuclei + "}" + tissueTotal + "}")
                            .setNucleiTotal(nuclei).setAnnotationId(config.getAnnotationId())).build());
                out.onCompleted();
                jobEnded.countDown();
            }

            private void fail(Status s) {
                closed = true;
                out.onError(s.asRuntimeException());
                jobEnded.countDown();
            }

            @Override
            public void onError(Throwable t) {
                closed = true;
                jobEnded.countDown();
            }

            @Override
            public void onCompleted() {
                finish();
            }
        };
    }

    private static BufferedImage decode(Tile t) {
        if (t.getEncoding() == PixelEncoding.RAW_RGB) {
            byte[] b = t.getPixels().toByteArray();
            if (b.length != t.getWidth() * t.getHeight() * 3)
                throw new IllegalStateException("RAW_RGB size mismatch");
            return new RgbTile(t.getWidth(), t.getHeight(), b).toBufferedImage();
        }
        try {
            BufferedImage img = ImageIO.read(new ByteArrayInputStream(t.getPixels().toByteArray()));
            if (img.getWidth() != t.getWidth() || img.getHeight() != t.getHeight())
                throw new IllegalStateException("encoded size mismatch");
            return img;
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
    }

    static JsonObject feature(double cx, double cy, double mpp) {
        JsonObject props = new JsonObject();
        props.addProperty("objectType", "detection");
        JsonObject cls = new JsonObject();
        cls.addProperty("name", "Tumor");
        JsonArray color = new JsonArray();
        color.add(200); color.add(0); color.add(0);
        cls.add("color", color);
        props.add("classification", cls);
        JsonObject m = new JsonObject();
        m.addProperty("Nucleus: Area µm^2", 36 * mpp * mpp);
        props.add("measurements", m);
        JsonObject f = new JsonObject();
        f.addProperty("type", "Feature");
        f.addProperty("id", UUID.randomUUID().toString());
        f.add("geometry", Geometries.rectangle(cx - 3, cy - 3, 6, 6));
        f.add("properties", props);
        return f;
    }

    /** A PAGET-like tissue annotation Feature (objectType "annotation", classification name + colour, areas). */
    static JsonObject tissueFeature(String className, int[] rgb, JsonObject geometry, double areaPx, double mpp) {
        JsonObject props = new JsonObject();
        props.addProperty("objectType", "annotation");
        props.addProperty("name", "PAGET " + className);
        JsonObject cls = new JsonObject();
        cls.addProperty("name", className);
        JsonArray color = new JsonArray();
        for (int v : rgb)
            color.add(v);
        cls.add("color", color);
        props.add("classification", cls);
        props.addProperty("isLocked", false);
        JsonObject m = new JsonObject();
        m.addProperty("Area px^2", areaPx);
        m.addProperty("Area µm^2", areaPx * mpp * mpp);
        props.add("measurements", m);
        JsonObject f = new JsonObject();
        f.addProperty("type", "Feature");
        f.addProperty("id", UUID.randomUUID().toString());
        f.add("geometry", geometry);
        f.add("properties", props);
        return f;
    }

    private static void sleep(long ms) {
        if (ms <= 0)
            return;
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}
