package qupath.ext.segtme.client;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import com.google.protobuf.ByteString;
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ChannelCredentials;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ClientInterceptors;
import io.grpc.ForwardingClientCall;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.TlsChannelCredentials;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import qupath.ext.segtme.client.proto.DetectRequest;
import qupath.ext.segtme.client.proto.DetectResponse;
import qupath.ext.segtme.client.proto.End;
import qupath.ext.segtme.client.proto.GetInfoRequest;
import qupath.ext.segtme.client.proto.JobConfig;
import qupath.ext.segtme.client.proto.ListModelsRequest;
import qupath.ext.segtme.client.proto.ModelInfo;
import qupath.ext.segtme.client.proto.OutputType;
import qupath.ext.segtme.client.proto.PixelEncoding;
import qupath.ext.segtme.client.proto.Rect;
import qupath.ext.segtme.client.proto.SegTMEGrpc;
import qupath.ext.segtme.client.proto.ServerInfo;
import qupath.ext.segtme.client.proto.Tile;

import javax.imageio.ImageIO;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.CancellationException;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.function.Supplier;
import java.util.logging.Logger;

/**
 * gRPC client for the SegTME server (no QuPath dependency).
 * <p>
 * Thread-safe; one instance per server. {@link #close()} shuts the channel down if this client created it.
 * <ul>
 * <li>{@link #getInfo()}, {@link #listModels()}: unary calls with {@code callTimeout}, retried on UNAVAILABLE.</li>
 * <li>{@link #detectTME}: plans the tiles (the written rule, {@link TilePlanner}), opens one bidirectional
 * stream (JobConfig, then one Tile per plan entry read from a {@link TileSource}, then End), honours gRPC flow
 * control so at most about one tile is buffered, reports progress, and returns only once the server's
 * TMEReport has arrived and every nucleus batch has been collected and checked (atomic: otherwise it throws).
 * Features with {@code objectType "annotation"} (PAGET tissue regions, sent after the nuclei) are collected
 * separately as {@link TissueFeature}s; their number is checked against the report's
 * {@code tissue_annotations_total} when present.
 * Cancelling the {@link CancelSignal} cancels the gRPC call, which the server sees as a cancelled stream.
 * If the stream fails with UNAVAILABLE before the server sent anything, the whole job is retried with backoff.</li>
 * </ul>
 */
public final class SegTMEClient implements AutoCloseable {

    private static final Logger LOG = Logger.getLogger(SegTMEClient.class.getName());
    private static final Metadata.Key<String> AUTHORIZATION = Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

    private final ClientConfig config;
    private final ManagedChannel ownedChannel;
    private final Channel channel;

    /** Connect to {@code config.target()} (plaintext or TLS). */
    public SegTMEClient(ClientConfig config) throws IOException {
        this(createChannel(config), config, true);
    }

    /** Use an existing channel (e.g. in-process, for tests); it is not shut down by {@link #close()}. */
    public SegTMEClient(ManagedChannel channel, ClientConfig config) {
        this(channel, config, false);
    }

    private SegTMEClient(ManagedChannel channel, ClientConfig config, boolean owned) {
        this.config = config;
        this.ownedChannel = owned ? channel : null;
        this.channel = config.bearerToken() == null ? channel
                : ClientInterceptors.intercept(channel, new BearerTokenInterceptor(config.bearerToken()));
    }

    private static ManagedChannel createChannel(ClientConfig config) throws IOException {
        ChannelCredentials creds;
        if (config.tls()) {
            var b = TlsChannelCredentials.newBuilder();
            if (config.trustCertificate() != null)
                b.trustManager(config.trustCertificate().toFile());
            creds = b.build();
        } else {
            creds = InsecureChannelCredentials.create();
        }
        // Grpc.newChannelBuilder finds the transport through ServiceLoader: grpc-netty here (Debian jars in CI),
        // grpc-netty-shaded in the extension's shadow jar (mergeServiceFiles keeps the provider entry).
        return Grpc.newChannelBuilder(config.target(), creds)
                .maxInboundMessageSize(config.maxInboundMessageBytes())
                .build();
    }

    public ClientConfig config() {
        return config;
    }

    /** Server version, device and loaded models. */
    public ServerInfo getInfo() {
        return withRetry("GetInfo", null, () -> SegTMEGrpc.newBlockingStub(channel)
                .withDeadlineAfter(config.callTimeout().toMillis(), TimeUnit.MILLISECONDS)
                .getInfo(GetInfoRequest.getDefaultInstance()));
    }

    /** Models the server can run. */
    public List<ModelInfo> listModels() {
        return withRetry("ListModels", null, () -> SegTMEGrpc.newBlockingStub(channel)
                .withDeadlineAfter(config.callTimeout().toMillis(), TimeUnit.MILLISECONDS)
                .listModels(ListModelsRequest.getDefaultInstance())).getModelsList();
    }

    /**
     * Resolve which model a job will run: {@code name}, or the server's default if empty.
     *
     * @throws SegTMEException code "NOT_FOUND" if the server does not offer it
     */
    public ModelInfo resolveModel(String name) {
        List<ModelInfo> models = listModels();
        String wanted = name == null || name.isBlank() ? getInfo().getDefaultModel() : name;
        for (ModelInfo m : models) {
            if (m.getName().equals(wanted))
                return m;
        }
        if ((name == null || name.isBlank()) && wanted.isEmpty() && !models.isEmpty())
            return models.get(0);
        List<String> names = models.stream().map(ModelInfo::getName).toList();
        throw new SegTMEException("NOT_FOUND", "model '" + wanted + "' is not offered by the server (available: " + names + ")", null);
    }

    /**
     * Run DetectTME for one annotation and collect the complete result.
     *
     * @param source   pixels of the image (full-res coordinates)
     * @param region   annotation bounds/geometry and the image's µm per pixel
     * @param options  model, output type, narrative, tile size/overlap, encoding
     * @param listener progress updates (may be null)
     * @param cancel   cancellation (may be null)
     * @return the complete result (never partial)
     * @throws CancellationException if cancelled
     * @throws SegTMEException       on any failure (gRPC status code in {@link SegTMEException#code()})
     */
    public DetectionResult detectTME(TileSource source, AnnotationRegion region, DetectOptions options,
                                     ProgressListener listener, CancelSignal cancel) {
        CancelSignal cs = cancel == null ? new CancelSignal() : cancel;
        ProgressListener pl = listener == null ? p -> {} : listener;
        checkCancelled(cs);
        ModelInfo model = resolveModel(options.model());
        int tile = options.tileSize() > 0 ? options.tileSize() : model.getTileSize();
        int overlap = options.overlap() >= 0 ? options.overlap() : model.getTileOverlap();
        if (region.x() < 0 || region.y() < 0 || region.x() + region.width() > source.width()
                || region.y() + region.height() > source.height())
            throw new IllegalArgumentException("annotation bounds " + region.x() + "," + region.y() + "," + region.width()
                    + "x" + region.height() + " are not inside the " + source.width() + "x" + source.height() + " image");
        TilePlanner.Plan plan = TilePlanner.plan(region.x(), region.y(), region.width(), region.height(),
                source.width(), source.height(), region.imageMpp(), model.getMpp(), tile, overlap);
        LOG.fine(() -> "SegTME job " + options.jobId() + ": " + plan.tiles().size() + " tiles, d=" + plan.downsample());
        pl.onProgress(new JobProgress(0, 0, plan.tiles().size(), 0, 0.0, "connecting"));
        for (int attempt = 1; ; attempt++) {
            checkCancelled(cs);
            StreamJob job = new StreamJob(source, region, options, model.getName(), plan, pl, cs);
            try {
                return job.run();
            } catch (StreamFailure f) {
                boolean retry = f.status.getCode() == Status.Code.UNAVAILABLE && !f.receivedAny
                        && attempt < config.connectAttempts() && !cs.isCancelled();
                if (!retry)
                    throw toException("DetectTME", f.status);
                LOG.info("SegTME server unavailable (" + f.status.getDescription() + "), retry " + attempt);
                sleepBackoff(attempt, cs);
            }
        }
    }

    @Override
    public void close() {
        if (ownedChannel == null)
            return;
        ownedChannel.shutdownNow();
        try {
            ownedChannel.awaitTermination(5, TimeUnit.SECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    // ------------------------------------------------------------------ internals

    private <T> T withRetry(String what, CancelSignal cancel, Supplier<T> call) {
        for (int attempt = 1; ; attempt++) {
            try {
                return call.get();
            } catch (StatusRuntimeException e) {
                if (e.getStatus().getCode() != Status.Code.UNAVAILABLE || attempt >= config.connectAttempts())
                    throw toException(what, e.getStatus());
                LOG.info("SegTME server unavailable for " + what + " (" + e.getStatus().getDescription() + "), retry " + attempt);
                sleepBackoff(attempt, cancel);
            }
        }
    }

    private void sleepBackoff(int attempt, CancelSignal cancel) {
        try {
            Thread.sleep(config.backoff(attempt).toMillis());
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new CancellationException("interrupted while waiting to reconnect");
        }
        if (cancel != null)
            checkCancelled(cancel);
    }

    private static void checkCancelled(CancelSignal cs) {
        if (cs.isCancelled())
            throw new CancellationException("SegTME job cancelled");
    }

    private SegTMEException toException(String what, Status status) {
        String msg = switch (status.getCode()) {
            case UNAVAILABLE -> "SegTME server at " + config.target() + " is unavailable after "
                    + config.connectAttempts() + " attempt(s): " + status.getDescription()
                    + " (is `segtme serve` running there?)";
            case UNAUTHENTICATED -> "the SegTME server refused the credentials: " + status.getDescription();
            case DEADLINE_EXCEEDED -> what + " did not finish within the deadline: " + status.getDescription();
            default -> what + " failed: " + status.getCode() + (status.getDescription() == null ? "" : ": " + status.getDescription());
        };
        return new SegTMEException(status.getCode().name(), msg, status.getCause());
    }

    private static final class StreamFailure extends RuntimeException {
        private static final long serialVersionUID = 1L;
        final transient Status status;
        final boolean receivedAny;

        StreamFailure(Status status, boolean receivedAny) {
            super(status.toString(), null, false, false);
            this.status = status;
            this.receivedAny = receivedAny;
        }
    }

    /** One attempt at streaming one job. */
    private final class StreamJob implements ClientResponseObserver<DetectRequest, DetectResponse> {

        private final TileSource source;
        private final AnnotationRegion region;
        private final DetectOptions options;
        private final String modelName;
        private final TilePlanner.Plan plan;
        private final ProgressListener listener;
        private final CancelSignal cancel;

        private final Object lock = new Object();
        private final CountDownLatch done = new CountDownLatch(1);
        private ClientCallStreamObserver<DetectRequest> requests;
        private final List<NucleusFeature> nuclei = new ArrayList<>();
        private final List<TissueFeature> tissue = new ArrayList<>();
        private final Set<String> ids = new HashSet<>();
        private final List<JobProgress> progress = Collections.synchronizedList(new ArrayList<>());
        private volatile TmeReport report;
        private volatile Status failure;
        private volatile boolean receivedAny;
        private volatile int tilesSent;
        private volatile int tilesDone;
        private volatile long nucleiSoFar;
        private volatile double lastFraction;

        StreamJob(TileSource source, AnnotationRegion region, DetectOptions options, String modelName,
                  TilePlanner.Plan plan, ProgressListener listener, CancelSignal cancel) {
            this.source = source;
            this.region = region;
            this.options = options;
            this.modelName = modelName;
            this.plan = plan;
            this.listener = listener;
            this.cancel = cancel;
        }

        DetectionResult run() {
            SegTMEGrpc.newStub(channel)
                    .withDeadlineAfter(config.jobTimeout().toMillis(), TimeUnit.MILLISECONDS)
                    .detectTME(this);
            Runnable unregister = cancel.onCancel(() -> requests.cancel("cancelled by the user", null));
            try {
                requests.onNext(DetectRequest.newBuilder().setConfig(jobConfig()).build());
                for (TilePlanner.PlannedTile t : plan.tiles()) {
                    if (!awaitReady())
                        break;
                    Tile msg = readTile(t);
                    if (msg == null)
                        break;
                    requests.onNext(DetectRequest.newBuilder().setTile(msg).build());
                    tilesSent = t.index() + 1;
                }
                if (failure == null && !cancel.isCancelled()) {
                    requests.onNext(DetectRequest.newBuilder().setEnd(End.getDefaultInstance()).build());
                    requests.onCompleted();
                }
                done.await();
            } catch (InterruptedException e) {
                requests.cancel("client interrupted", e);
                Thread.currentThread().interrupt();
                throw new CancellationException("interrupted");
            } catch (RuntimeException e) {
                requests.cancel("client error: " + e, e);
                if (cancel.isCancelled())
                    throw new CancellationException("SegTME job " + options.jobId() + " cancelled");
                throw e;
            } finally {
                unregister.run();
            }
            if (cancel.isCancelled())
                throw new CancellationException("SegTME job " + options.jobId() + " cancelled");
            if (failure != null)
                throw new StreamFailure(failure, receivedAny);
            return complete();
        }

        private JobConfig jobConfig() {
            return JobConfig.newBuilder()
                    .setModel(modelName)
                    .setImageMpp(region.imageMpp())
                    .setAnnotationGeojson(region.geometryGeoJson())
                    .setOutputType(options.output() == DetectOptions.Output.CELLS ? OutputType.CELLS : OutputType.DETECTIONS)
                    .setNarrativeBackend(options.narrativeBackend())
                    .setPerTileResults(options.perTileResults())
                    .setJobId(options.jobId())
                    .setExpectedTiles(plan.tiles().size())
                    .setAnnotationId(region.annotationId())
                    .build();
        }

        /** Wait for gRPC flow control; false if the job ended (failure, cancel) meanwhile. */
        private boolean awaitReady() throws InterruptedException {
            synchronized (lock) {
                while (!requests.isReady()) {
                    if (failure != null || cancel.isCancelled() || done.getCount() == 0)
                        return false;
                    lock.wait(100);
                }
            }
            return failure == null && !cancel.isCancelled() && done.getCount() > 0;
        }

        private Tile readTile(TilePlanner.PlannedTile t) {
            RgbTile px;
            try {
                px = source.read(t.x(), t.y(), t.width(), t.height(), t.downsample());
            } catch (IOException e) {
                throw new SegTMEException("IO", "cannot read tile " + t.index() + " (" + t.x() + "," + t.y() + ","
                        + t.width() + "x" + t.height() + " at downsample " + t.downsample() + "): " + e.getMessage(), e);
            }
            Tile.Builder b = Tile.newBuilder()
                    .setIndex(t.index())
                    .setX(t.x()).setY(t.y())
                    .setDownsample(t.downsample())
                    .setWidth(px.width()).setHeight(px.height())
                    .setCore(Rect.newBuilder().setX(t.coreX0()).setY(t.coreY0())
                            .setWidth(t.coreX1() - t.coreX0()).setHeight(t.coreY1() - t.coreY0()));
            switch (options.encoding()) {
                case RAW_RGB -> b.setEncoding(PixelEncoding.RAW_RGB).setPixels(ByteString.copyFrom(px.rgb()));
                case PNG -> b.setEncoding(PixelEncoding.PNG).setPixels(encode(px, "png"));
                case JPEG -> b.setEncoding(PixelEncoding.JPEG).setPixels(encode(px, "jpg"));
            }
            return b.build();
        }

        private ByteString encode(RgbTile px, String format) {
            var out = new ByteArrayOutputStream(px.rgb().length / 2);
            try {
                if (!ImageIO.write(px.toBufferedImage(), format, out))
                    throw new IOException("no ImageIO writer for " + format);
            } catch (IOException e) {
                throw new SegTMEException("IO", "cannot encode tile as " + format + ": " + e.getMessage(), e);
            }
            return ByteString.copyFrom(out.toByteArray());
        }

        private DetectionResult complete() {
            TmeReport r = report;
            if (r == null)
                throw new SegTMEException("PROTOCOL", "the server ended job " + options.jobId() + " without a TME report", null);
            if (r.nucleiTotal() != nuclei.size())
                throw new SegTMEException("PROTOCOL", "the report counts " + r.nucleiTotal() + " nuclei but "
                        + nuclei.size() + " were received", null);
            // PAGET models: the report states how many tissue annotations were sent
            var total = r.reportJson().get("tissue_annotations_total");
            if (total != null && !total.isJsonNull() && total.getAsLong() != tissue.size())
                throw new SegTMEException("PROTOCOL", "the report counts " + total.getAsLong() + " tissue annotations but "
                        + tissue.size() + " were received", null);
            JobProgress last = progress.isEmpty() ? null : progress.get(progress.size() - 1);
            if (last == null || last.fraction() < 1.0)
                emit(new JobProgress(tilesSent, plan.tiles().size(), plan.tiles().size(), nuclei.size(), 1.0, "done"));
            return new DetectionResult(List.copyOf(nuclei), List.copyOf(tissue), r, plan, modelName, List.copyOf(progress));
        }

        private void emit(JobProgress p) {
            progress.add(p);
            try {
                listener.onProgress(p);
            } catch (RuntimeException e) {
                LOG.warning("progress listener failed: " + e);
            }
        }

        // ------------------------------------------------ ClientResponseObserver

        @Override
        public void beforeStart(ClientCallStreamObserver<DetectRequest> requestStream) {
            this.requests = requestStream;
            requestStream.setOnReadyHandler(() -> {
                synchronized (lock) {
                    lock.notifyAll();
                }
            });
        }

        @Override
        public void onNext(DetectResponse value) {
            receivedAny = true;
            try {
                switch (value.getMsgCase()) {
                    case PROGRESS -> {
                        var p = value.getProgress();
                        tilesDone = p.getTilesDone();
                        nucleiSoFar = p.getNucleiSoFar();
                        int expected = p.getTilesExpected() > 0 ? p.getTilesExpected() : plan.tiles().size();
                        // The server's fraction may be 1 on its own final Progress; the job is only
                        // complete for the client once the report is in, so cap below 1 until then.
                        double f = Math.max(lastFraction, Math.min(p.getFraction(), report == null ? 0.999 : 1.0));
                        lastFraction = f;
                        emit(new JobProgress(tilesSent, tilesDone, expected, nucleiSoFar, f, p.getStage()));
                    }
                    case NUCLEI -> addBatch(value.getNuclei());
                    case REPORT -> report = TmeReport.fromProto(value.getReport());
                    default -> { }
                }
            } catch (RuntimeException e) {
                failure = Status.INTERNAL.withDescription("malformed server response: " + e.getMessage()).withCause(e);
                requests.cancel("malformed server response", e);
            }
        }

        private void addBatch(qupath.ext.segtme.client.proto.NucleiBatch batch) {
            if (batch.getFeaturesGeojson().isBlank() && batch.getCount() == 0)
                return;
            JsonElement root = JsonParser.parseString(batch.getFeaturesGeojson());
            var features = root.isJsonArray() ? root.getAsJsonArray()
                    : root.getAsJsonObject().getAsJsonArray("features");
            int n = 0;
            for (JsonElement e : features) {
                JsonObject o = e.getAsJsonObject();
                if (TissueFeature.isAnnotation(o)) {
                    // PAGET tissue region (objectType "annotation"): kept apart from the nuclei
                    TissueFeature t = TissueFeature.parse(o);
                    if (t.id() != null && !ids.add(t.id()))
                        throw new IllegalStateException("feature id " + t.id() + " sent twice");
                    tissue.add(t);
                } else {
                    NucleusFeature f = NucleusFeature.parse(o);
                    if (f.id() != null && !ids.add(f.id()))
                        throw new IllegalStateException("nucleus id " + f.id() + " sent twice");
                    nuclei.add(f);
                }
                n++;
            }
            if (batch.getCount() != 0 && batch.getCount() != n)
                throw new IllegalStateException("batch says " + batch.getCount() + " features but holds " + n);
        }

        @Override
        public void onError(Throwable t) {
            if (failure == null)
                failure = Status.fromThrowable(t);
            synchronized (lock) {
                lock.notifyAll();
            }
            done.countDown();
        }

        @Override
        public void onCompleted() {
            synchronized (lock) {
                lock.notifyAll();
            }
            done.countDown();
        }
    }

    /** Adds {@code authorization: Bearer <token>} to every call. */
    private static final class BearerTokenInterceptor implements ClientInterceptor {
        private final String value;

        BearerTokenInterceptor(String token) {
            this.value = "Bearer " + token;
        }

        @Override
        public <ReqT, RespT> ClientCall<ReqT, RespT> interceptCall(MethodDescriptor<ReqT, RespT> method,
                                                                   CallOptions callOptions, Channel next) {
            return new ForwardingClientCall.SimpleForwardingClientCall<>(next.newCall(method, callOptions)) {
                @Override
                public void start(Listener<RespT> responseListener, Metadata headers) {
                    headers.put(AUTHORIZATION, value);
                    super.start(responseListener, headers);
                }
            };
        }
    }

    /** Parse a GeoJSON string to a JsonObject (convenience for callers building geometries). */
    public static JsonObject parseJson(String json) {
        return JsonParser.parseString(json).getAsJsonObject();
    }
}
