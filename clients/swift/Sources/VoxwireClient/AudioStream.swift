import Foundation

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// A piece of the assistant's voice from `stream_audio`: PCM16 mono samples at `sampleRate`.
///
/// The server writes a 20 ms frame every 20 ms (silence when the assistant is quiet), so
/// frames keep coming; their sizes follow the network's reads, not the server's frames.
public struct AudioFrame: Sendable, Equatable {
    /// Samples, native-endian.
    public let samples: [Int16]
    /// The stream's rate, read from its WAV header (the session's `output_sample_rate`).
    public let sampleRate: Int
    /// Audio lost right before this frame: set on the first frame after a reconnect that the
    /// server could not resume (`X-Stream-Resumed: false`, the drop outlasted its replay
    /// buffer), `nil` otherwise. Nothing is inserted for the missing span: this frame starts
    /// the new response's lead silence, then live audio follows.
    public let gapBefore: AudioGap?

    init(samples: [Int16], sampleRate: Int, gapBefore: AudioGap? = nil) {
        self.samples = samples
        self.sampleRate = sampleRate
        self.gapBefore = gapBefore
    }
}

/// A span of the session's stream timeline that a reconnect could not replay.
///
/// Positions are milliseconds on the timeline `stream_audio` reports in
/// `X-Stream-Position-Ms`: `fromMs` is how far the client had received, `toMs` where the
/// new (live) response starts.
public struct AudioGap: Sendable, Equatable {
    /// The position received before the drop (the `from_ms` asked for).
    public let fromMs: Int
    /// The position the new response starts at.
    public let toMs: Int
    /// The audio lost, in milliseconds.
    public var missingMs: Int { toMs - fromMs }

    public init(fromMs: Int, toMs: Int) {
        self.fromMs = fromMs
        self.toMs = toMs
    }
}

/// Decodes the bytes of `stream_audio` into samples.
///
/// The body is a 44-byte WAV header (sizes `0xFFFFFFFF`: an endless stream) and then PCM16
/// little-endian mono. Reads split it anywhere, so an odd trailing byte is kept for the next
/// read, and the header may itself arrive in pieces.
public struct WAVStreamDecoder: Sendable {
    /// Size of the RIFF/WAVE header the stream starts with.
    public static let wavHeaderBytes = 44

    /// The sample rate from the header, once it has arrived.
    public private(set) var sampleRate: Int?
    private var pending = Data()

    public init() {}

    /// Feeds received bytes; returns the whole samples they complete (maybe none).
    /// - Throws: ``VoxwireClientError/invalidResponse(_:)`` if the header is not mono PCM16 WAV.
    public mutating func feed(_ data: Data) throws -> [Int16] {
        pending.append(data)
        if sampleRate == nil {
            guard pending.count >= Self.wavHeaderBytes else { return [] }
            sampleRate = try Self.parseHeader([UInt8](pending.prefix(Self.wavHeaderBytes)))
            pending = Data(pending.dropFirst(Self.wavHeaderBytes))
        }
        let bytes = [UInt8](pending)
        let count = bytes.count / 2
        var samples = [Int16](repeating: 0, count: count)
        for i in 0..<count {
            samples[i] = Int16(bitPattern: UInt16(bytes[2 * i]) | UInt16(bytes[2 * i + 1]) << 8)
        }
        pending = Data(bytes[(2 * count)...])  // the odd byte, if any
        return samples
    }

    /// The sample rate of a 44-byte mono PCM16 WAV header.
    static func parseHeader(_ header: [UInt8]) throws -> Int {
        func u16(_ at: Int) -> Int { Int(header[at]) | Int(header[at + 1]) << 8 }
        func u32(_ at: Int) -> Int { u16(at) | u16(at + 2) << 16 }
        func tag(_ at: Int) -> String { String(decoding: header[at..<at + 4], as: UTF8.self) }
        guard tag(0) == "RIFF", tag(8) == "WAVE", tag(12) == "fmt ", tag(36) == "data",
            u16(20) == 1, u16(22) == 1, u16(34) == 16
        else {
            throw VoxwireClientError.invalidResponse("stream_audio is not mono PCM16 WAV")
        }
        return u32(24)
    }
}

/// Where one `stream_audio` response sits on the session's stream timeline, from its
/// headers (see docs/clients.md, "Resuming after a drop").
struct StreamStart: Sendable, Equatable {
    /// `X-Stream-Position-Ms`: the timeline position of the first sample after the WAV header
    /// and the padding.
    var positionMs: Int
    /// `X-Stream-Padding-Bytes`: lead silence after the header that is not on the timeline.
    var paddingBytes: Int
    /// `X-Stream-Resumed`: the response replays from the `from_ms` asked for.
    var resumed: Bool

    /// The start a response announces; `nil` if it carries no position (a server without
    /// resume: the client then reconnects without `from_ms`).
    init?(_ response: HTTPURLResponse) {
        func number(_ name: String) -> Int? {
            guard let value = response.value(forHTTPHeaderField: name),
                !value.isEmpty, value.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 })
            else { return nil }
            return Int(value)
        }
        guard let position = number("X-Stream-Position-Ms") else { return nil }
        self.init(
            positionMs: position, paddingBytes: number("X-Stream-Padding-Bytes") ?? 0,
            resumed: response.value(forHTTPHeaderField: "X-Stream-Resumed")?.lowercased() == "true")
    }

    init(positionMs: Int, paddingBytes: Int, resumed: Bool) {
        self.positionMs = positionMs
        self.paddingBytes = paddingBytes
        self.resumed = resumed
    }
}

/// The audio stream's timeline across `stream_audio` responses: how far the client has
/// received (the `from_ms` of a reconnect), and what each new response's first samples are.
///
/// A fresh response starts with padding silence (the server's lead): it is delivered for
/// playback but is not on the timeline, so it does not advance ``receivedSamples``. A
/// resumed response starts up to one 20 ms frame before the position asked for: that
/// overlap (`received - position`) was delivered already and is dropped. A response that
/// starts later than the position received leaves a gap, reported once with the next frame.
struct AudioTimeline: Sendable, Equatable {
    /// The stream's rate, from the first response's WAV header.
    private(set) var sampleRate: Int?
    /// The timeline position, in samples at ``sampleRate``, of the next sample expected
    /// (`nil` until a response with a position has begun).
    private(set) var receivedSamples: Int?
    private var paddingSamples = 0
    private var overlapSamples = 0
    private var gap: AudioGap?

    /// The `from_ms` to reconnect with: the position received, in whole milliseconds.
    var receivedMs: Int? {
        guard let receivedSamples, let sampleRate else { return nil }
        return receivedSamples * 1000 / sampleRate
    }

    /// A response's WAV header has arrived: line its samples up with what was received.
    ///
    /// - Parameter start: the response's headers (`nil`: no position, nothing is tracked).
    /// - Throws: ``VoxwireClientError/invalidResponse(_:)`` if the rate changed.
    mutating func begin(_ start: StreamStart?, sampleRate rate: Int) throws {
        if let sampleRate, sampleRate != rate {
            throw VoxwireClientError.invalidResponse("stream_audio changed its sample rate")
        }
        sampleRate = rate
        guard let start else {
            receivedSamples = nil
            paddingSamples = 0
            overlapSamples = 0
            return
        }
        let position = start.positionMs * rate / 1000
        paddingSamples = start.paddingBytes / MemoryLayout<Int16>.size
        overlapSamples = 0
        guard let received = receivedSamples else {
            receivedSamples = position  // the first response: the timeline starts here
            return
        }
        overlapSamples = max(0, received - position)
        if !start.resumed || position > received {
            let fromMs = received * 1000 / rate
            let lost = AudioGap(fromMs: gap?.fromMs ?? fromMs, toMs: max(fromMs, start.positionMs))
            gap = lost  // merged with one not yet reported (a drop before any new sample)
        }
        receivedSamples = max(received, position)
    }

    /// The samples of the current response (after its header) to deliver: its padding, then
    /// what is on the timeline past the overlap, which advances ``receivedSamples``.
    mutating func feed(_ samples: [Int16]) -> [Int16] {
        var rest = samples[...]
        var delivered: [Int16] = []
        if paddingSamples > 0 {
            let lead = min(paddingSamples, rest.count)
            delivered.append(contentsOf: rest.prefix(lead))
            rest = rest.dropFirst(lead)
            paddingSamples -= lead
        }
        if overlapSamples > 0 {
            let repeated = min(overlapSamples, rest.count)
            rest = rest.dropFirst(repeated)
            overlapSamples -= repeated
        }
        if let received = receivedSamples {
            receivedSamples = received + rest.count
        }
        delivered.append(contentsOf: rest)
        return delivered
    }

    /// The gap left by the latest reconnect, once (then `nil`).
    mutating func takeGap() -> AudioGap? {
        defer { gap = nil }
        return gap
    }
}

/// How the audio stream reconnects after a lost connection: exponential backoff with full
/// jitter, a bounded number of attempts in a row (docs/clients.md, "Backoff").
enum AudioStreamReconnect {
    /// Failed attempts in a row before the stream ends with the last error.
    static let maxAttempts = 8
    /// The cap of the first delay, doubled per failure up to ``maxDelaySeconds``.
    static let baseDelaySeconds: TimeInterval = 0.25
    static let maxDelaySeconds: TimeInterval = 5
    /// Answers worth another attempt: a proxy without its upstream, overload, a timeout.
    /// Any other status (404: the session is gone) ends the stream.
    static let retryableStatuses: Set<Int> = [408, 429, 502, 503, 504]

    /// A random delay in `[0, min(max, base * 2^(attempt-1))]` before attempt `attempt` (1...).
    static func delay(attempt: Int) -> TimeInterval {
        let cap = min(maxDelaySeconds, baseDelaySeconds * pow(2, Double(max(0, attempt - 1))))
        return TimeInterval.random(in: 0...cap)
    }

    /// Whether a transport failure may go away by connecting again. A cancelled task (the
    /// consumer stopped), a bad URL or a TLS/authentication refusal will not.
    static func isTransient(_ error: Error) -> Bool {
        NetworkFailure.isTransient(error)
    }
}

/// Feeds one `stream_audio` response into the `AsyncThrowingStream` of frames, carrying the
/// timeline from the responses before it, and reports how it ended so the session can
/// reconnect.
final class AudioStreamReceiver: StreamingReceiver {
    /// How one response ended.
    enum End: Sendable {
        /// The final chunk: the session was closed, or another `audioStream()` took over.
        case clean
        /// An HTTP error status (404 `session_not_found`...), decoded from its body.
        case refused(VoxwireError)
        /// The connection failed (a `URLError`): reconnect if it is transient.
        case dropped(Error)
        /// The stream is unusable (a bad WAV header, a changed rate): already finished.
        case failed(Error)
    }

    /// The end, the timeline as it stands, and whether the response was a good one (200
    /// with its WAV header), which resets the reconnect attempts.
    struct Outcome: Sendable {
        var end: End
        var timeline: AudioTimeline
        var connected: Bool
    }

    private let continuation: AsyncThrowingStream<AudioFrame, Error>.Continuation
    private let done: @Sendable (Outcome) -> Void
    private var timeline: AudioTimeline
    private var decoder = WAVStreamDecoder()
    private var start: StreamStart?
    private var begun = false
    private var errorResponse: HTTPURLResponse?
    private var errorBody = Data()
    private var failure: Error?

    init(
        timeline: AudioTimeline, continuation: AsyncThrowingStream<AudioFrame, Error>.Continuation,
        done: @escaping @Sendable (Outcome) -> Void
    ) {
        self.timeline = timeline
        self.continuation = continuation
        self.done = done
    }

    func receive(response: HTTPURLResponse) {
        if response.statusCode != 200 {
            errorResponse = response
        } else {
            start = StreamStart(response)
        }
    }

    func receive(data: Data) {
        guard errorResponse == nil else {
            errorBody.append(data)
            return
        }
        guard failure == nil else { return }
        do {
            let samples = try decoder.feed(data)
            guard let rate = decoder.sampleRate else { return }  // the header is not complete
            if !begun {
                try timeline.begin(start, sampleRate: rate)
                begun = true
            }
            let delivered = timeline.feed(samples)
            if !delivered.isEmpty {
                continuation.yield(
                    AudioFrame(samples: delivered, sampleRate: rate, gapBefore: timeline.takeGap()))
            }
        } catch {
            failure = error
            continuation.finish(throwing: error)  // ends the session's loop (and this task)
        }
    }

    func complete(error: Error?) {
        let end: End
        if let failure {
            end = .failed(failure)
        } else if let errorResponse {
            end = .refused(VoxwireError(response: errorResponse, body: errorBody))
        } else if let error {
            end = .dropped(error)
        } else {
            end = .clean  // the server ended the stream
        }
        done(Outcome(end: end, timeline: timeline, connected: begun))
    }
}
