import Foundation

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// A voxwire server: creates sessions.
///
/// ```swift
/// let client = VoxwireClient(baseURL: URL(string: "https://voice.example.com")!)
/// let session = try await client.createSession(config: ["output_sample_rate": 24000])
/// ```
///
/// The client owns one `URLSession` (see ``defaultConfiguration()``) shared by all of its
/// sessions; keep the client alive as long as you use them (each session holds it).
public final class VoxwireClient: @unchecked Sendable {  // immutable after init
    /// The server, e.g. `http://127.0.0.1:8000`.
    public let baseURL: URL
    let apiKey: String?
    let urlSession: URLSession
    let router: DataTaskRouter
    let configuration: URLSessionConfiguration

    /// - Parameters:
    ///   - baseURL: the server's root URL.
    ///   - apiKey: sent as `Authorization: Bearer` when creating sessions, if the server has
    ///     `VOXWIRE_API_KEY` set.
    ///   - configuration: URLSession settings; the default suits long-lived streams.
    public init(
        baseURL: URL, apiKey: String? = nil,
        configuration: URLSessionConfiguration = VoxwireClient.defaultConfiguration()
    ) {
        self.baseURL = baseURL
        self.apiKey = apiKey
        let router = DataTaskRouter()
        let queue = OperationQueue()
        queue.name = "voxwire.urlsession.delegate"
        queue.maxConcurrentOperationCount = 1  // serial: each receiver sees one call at a time
        self.router = router
        self.configuration = configuration
        self.urlSession = URLSession(configuration: configuration, delegate: router, delegateQueue: queue)
    }

    /// A request/response call. On Linux a body in memory goes as a replayable body stream
    /// (sent chunked), because swift-corelibs-foundation would send a `Data` body empty if
    /// libcurl resends the request on a new connection (see `voxwireUpload`).
    func perform(_ request: URLRequest) async throws -> (Data, URLResponse) {
        #if canImport(FoundationNetworking)
            if let body = request.httpBody, !body.isEmpty {
                var streamed = request
                streamed.httpBody = nil
                let (data, response) = try await urlSession.voxwireUpload(streamed, from: body, router: router)
                return (data, response)
            }
        #endif
        return try await urlSession.data(for: request)
    }

    /// Where a streamed upload runs: the client's URLSession on Apple platforms. On Linux a
    /// URLSession of its own (`dedicated`: invalidate it afterwards), because there the body
    /// stream's reads block the URLSession's only work queue between pieces of audio
    /// (see `BlockingBody`), which would stall the audio stream and the events.
    func streamingUploadTransport() -> (session: URLSession, router: DataTaskRouter, dedicated: Bool) {
        #if canImport(FoundationNetworking)
            let router = DataTaskRouter()
            let queue = OperationQueue()
            queue.name = "voxwire.urlsession.upload-delegate"
            queue.maxConcurrentOperationCount = 1
            let session = URLSession(configuration: configuration, delegate: router, delegateQueue: queue)
            return (session, router, true)
        #else
            return (urlSession, router, false)
        #endif
    }

    deinit {
        urlSession.invalidateAndCancel()  // a URLSession holds its delegate until invalidated
    }

    /// The URLSession configuration voxwire needs.
    ///
    /// - `timeoutIntervalForRequest = 60`: this is an *idle* timeout (time between bytes), so it
    ///   also bounds the endless GETs: `stream_audio` writes every 20 ms, `events` sends a
    ///   `: ping` after 15 s of quiet, and uploads are answered within the server's 5 s
    ///   backpressure limit. Raise it if you raise the server's `sse_ping_interval_s`.
    /// - `timeoutIntervalForResource` = 1 day: a whole-task limit, so it must outlast the
    ///   longest conversation (both streams are one task each for the session's lifetime).
    /// - `httpMaximumConnectionsPerHost = 6` (iOS's default is 4): the stream and the events
    ///   each hold an HTTP/1.1 connection for the whole session, the uploads reuse a third, a
    ///   client event (a commit) may need a fourth, and a reconnecting stream briefly
    ///   overlaps the one it replaces. With 4, a request could queue behind the streams.
    /// - `requestCachePolicy = .reloadIgnoringLocalCacheData`, no `urlCache`: nothing here is
    ///   cacheable, and a cached stream would be wrong.
    /// - `waitsForConnectivity = true`: offline, requests wait for the network rather than
    ///   failing at once; the uploader's backlog (5 s) is what tells the app audio is stuck.
    ///
    /// Background sessions (`URLSessionConfiguration.background`) do not work here: they
    /// support neither data tasks delivering bytes as they arrive nor request bodies from
    /// memory; a voice session needs the app in the foreground (or an audio background mode).
    public static func defaultConfiguration() -> URLSessionConfiguration {
        let configuration = URLSessionConfiguration.default
        configuration.timeoutIntervalForRequest = 60
        configuration.timeoutIntervalForResource = 24 * 60 * 60
        configuration.httpMaximumConnectionsPerHost = 6
        configuration.requestCachePolicy = .reloadIgnoringLocalCacheData
        configuration.urlCache = nil
        #if !canImport(FoundationNetworking)
            // swift-corelibs-foundation (Linux) has no such setting: requests fail at once.
            configuration.waitsForConnectivity = true
        #endif
        return configuration
    }

    /// Creates a session: `POST /api/sessions` with `config` as its JSON body.
    ///
    /// - Parameter config: session settings (see the server's `docs/api.md`), e.g.
    ///   `["output_sample_rate": 24000, "turn_detection": nil]` for push-to-talk at 24 kHz.
    /// - Throws: ``VoxwireError`` (422 bad config, 401 API key, 503 full or not ready...).
    public func createSession(config: [String: JSONValue] = [:]) async throws -> VoxwireSession {
        let body = try JSONEncoder().encode(config)
        let request = Requests.createSession(baseURL: baseURL, apiKey: apiKey, config: body)
        let (data, response) = try await perform(request)
        _ = try HTTP.checked(response, body: data, expected: 201)
        let info = try JSONDecoder().decode(SessionInfo.self, from: data)
        return VoxwireSession(client: self, info: info)
    }
}

/// The server's answer to session creation.
public struct SessionInfo: Decodable, Sendable {
    /// `sess_…`
    public let id: String
    /// The session's bearer token (send it only to this server).
    public let token: String
    /// Paths of the session's resources.
    public let urls: SessionURLs
    /// The session's full config, defaults filled in.
    public let config: [String: JSONValue]

    /// The input rate uploads must use (`input_sample_rate`, 16000 unless configured).
    public var inputSampleRate: Int { config["input_sample_rate"]?.intValue ?? 16000 }
}

/// Paths of one session's resources, as the server names them.
public struct SessionURLs: Decodable, Sendable {
    public let session: String
    public let uploadAudio: String
    public let streamAudio: String
    public let stopStream: String
    public let events: String

    enum CodingKeys: String, CodingKey {
        case session
        case uploadAudio = "upload_audio"
        case streamAudio = "stream_audio"
        case stopStream = "stop_stream"
        case events
    }
}
