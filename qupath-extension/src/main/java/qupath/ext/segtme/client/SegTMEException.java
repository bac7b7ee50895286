package qupath.ext.segtme.client;

/**
 * A failed call, with the gRPC status code name ("UNAVAILABLE", "UNAUTHENTICATED",
 * "DEADLINE_EXCEEDED", "INVALID_ARGUMENT", ...) or "PROTOCOL" when the server broke the contract.
 */
public class SegTMEException extends RuntimeException {

    private static final long serialVersionUID = 1L;

    private final String code;

    public SegTMEException(String code, String message, Throwable cause) {
        super(message, cause);
        this.code = code;
    }

    public String code() {
        return code;
    }
}
