import Foundation

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// An error answered by the server, decoded from its OpenAI-style JSON body:
///
/// ```json
/// {"type": "error", "error": {"type": "invalid_request_error", "code": "sequence_gap",
///                             "message": "expected X-Sequence 2, got 3", "param": "X-Sequence",
///                             "event_id": null}}
/// ```
///
/// `error` server events carry the same object (see ``VoxwireEvent/error``); they have no
/// HTTP status, so theirs is 0.
public struct VoxwireError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The HTTP status (0 for an `error` server event).
    public let status: Int
    /// The machine-readable code, e.g. `sequence_gap`, `session_not_found`.
    public let code: String
    /// The human-readable message.
    public let message: String
    /// The offending parameter or header, e.g. `X-Sequence`, `turn_detection.threshold`.
    public let param: String?
    /// The error class, e.g. `invalid_request_error`, `authentication_error`.
    public let type: String?
    /// The `event_id` of the client event that caused it (`POST events`), if it had one.
    public let eventID: String?
    /// `Retry-After` in seconds (429 and 503).
    public let retryAfter: TimeInterval?
    /// `X-Accepted-Bytes`: how much of a streamed upload the server kept before it answered
    /// this error (everything accepted stays accepted), so the app knows where to resume.
    public let acceptedBytes: Int?

    public init(
        status: Int, code: String, message: String, param: String? = nil, type: String? = nil,
        eventID: String? = nil, retryAfter: TimeInterval? = nil, acceptedBytes: Int? = nil
    ) {
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.type = type
        self.eventID = eventID
        self.retryAfter = retryAfter
        self.acceptedBytes = acceptedBytes
    }

    public var description: String {
        let suffix = param.map { " (\($0))" } ?? ""
        let cause = eventID.map { " (event \($0))" } ?? ""
        return "voxwire \(status) \(code): \(message)\(suffix)\(cause)"
    }

    /// The wire format of an error body (its keys as sent).
    struct Body: Decodable {
        struct Inner: Decodable {
            let type: String?
            let code: String?
            let message: String?
            let param: String?
            let event_id: String?  // the wire's key: the client event refused
        }
        let error: Inner
    }

    /// Decodes an error response; a body that is not voxwire's JSON still gives an error.
    init(response: HTTPURLResponse, body: Data) {
        let retryAfter = response.value(forHTTPHeaderField: "Retry-After").flatMap(TimeInterval.init)
        let accepted = response.value(forHTTPHeaderField: "X-Accepted-Bytes").flatMap(Int.init)
        if let decoded = try? JSONDecoder().decode(Body.self, from: body) {
            self.init(
                status: response.statusCode, code: decoded.error.code ?? "error",
                message: decoded.error.message ?? "", param: decoded.error.param,
                type: decoded.error.type, eventID: decoded.error.event_id, retryAfter: retryAfter,
                acceptedBytes: accepted)
        } else {
            let text = String(decoding: body.prefix(200), as: UTF8.self)
            self.init(
                status: response.statusCode, code: "http_\(response.statusCode)",
                message: text.isEmpty ? HTTPURLResponse.localizedString(
                    forStatusCode: response.statusCode) : text,
                retryAfter: retryAfter, acceptedBytes: accepted)
        }
    }
}

/// Which transport failures are worth another attempt.
enum NetworkFailure {
    /// Whether a failed request may succeed if sent again: anything but a cancellation (the
    /// app stopped it), a bad URL or a TLS/authentication refusal.
    ///
    /// Deliberately broad: swift-corelibs-foundation (Linux) reports most libcurl failures
    /// as `URLError.unknown` (a connection closed mid-body: "transfer closed with outstanding
    /// read data remaining") or `.badServerResponse` (closed before any response byte), where
    /// Apple's URLSession says `.networkConnectionLost`. Every caller bounds its attempts.
    static func isTransient(_ error: Error) -> Bool {
        guard let error = error as? URLError else { return false }
        switch error.code {
        case .cancelled, .badURL, .unsupportedURL, .userCancelledAuthentication,
            .userAuthenticationRequired, .appTransportSecurityRequiresSecureConnection,
            .serverCertificateUntrusted, .serverCertificateHasBadDate,
            .serverCertificateNotYetValid, .serverCertificateHasUnknownRoot,
            .clientCertificateRejected, .clientCertificateRequired:
            return false
        default:
            return true
        }
    }
}

/// Failures detected on this side of the wire.
public enum VoxwireClientError: Error, Sendable, Equatable {
    /// The uploader already holds `pendingChunks` unsent chunks (see
    /// ``AudioUploader/maxPendingChunks``): the audio offered was not queued.
    case uploadBacklogFull(pendingChunks: Int)
    /// The session was closed; nothing more can be sent.
    case closed
    /// A response the client cannot use (not HTTP, not the expected content type, a bad WAV
    /// header...).
    case invalidResponse(String)
}
