import Foundation

/// A piece of the assistant's voice from `stream_audio`: PCM16 mono samples at `sampleRate`.
///
/// The server writes a 20 ms frame every 20 ms (silence when the assistant is quiet), so
/// frames keep coming; their sizes follow the network's reads, not the server's frames.
public struct AudioFrame: Sendable, Equatable {
    /// Samples, native-endian.
    public let samples: [Int16]
    /// The stream's rate, read from its WAV header (the session's `output_sample_rate`).
    public let sampleRate: Int
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

/// Feeds one `stream_audio` response into an `AsyncThrowingStream` of frames.
final class AudioStreamReceiver: StreamingReceiver {
    private let continuation: AsyncThrowingStream<AudioFrame, Error>.Continuation
    private var decoder = WAVStreamDecoder()
    private var errorResponse: HTTPURLResponse?
    private var errorBody = Data()
    private var failed = false

    init(_ continuation: AsyncThrowingStream<AudioFrame, Error>.Continuation) {
        self.continuation = continuation
    }

    func receive(response: HTTPURLResponse) {
        if response.statusCode != 200 { errorResponse = response }
    }

    func receive(data: Data) {
        guard errorResponse == nil else {
            errorBody.append(data)
            return
        }
        guard !failed else { return }
        do {
            let samples = try decoder.feed(data)
            if let rate = decoder.sampleRate, !samples.isEmpty {
                continuation.yield(AudioFrame(samples: samples, sampleRate: rate))
            }
        } catch {
            failed = true
            continuation.finish(throwing: error)
        }
    }

    func complete(error: Error?) {
        if let errorResponse {
            continuation.finish(throwing: VoxwireError(response: errorResponse, body: errorBody))
        } else {
            continuation.finish(throwing: error)  // nil: the server ended the stream cleanly
        }
    }
}
