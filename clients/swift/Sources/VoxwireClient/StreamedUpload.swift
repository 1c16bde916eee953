import Foundation

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// What a streamed upload's body holds: its `Content-Type` (docs/api.md, "upload_audio").
public enum AudioUploadFormat: Sendable, Equatable {
    /// PCM16 little-endian mono at the session's `input_sample_rate`
    /// (`application/octet-stream`).
    case session
    /// PCM16 little-endian mono at `rate` Hz (`audio/pcm;rate=N`); the server resamples.
    case pcm16(rate: Int)
    /// RFC 2586 `audio/L16;rate=N`: PCM16 **big-endian** mono at `rate` Hz.
    case l16(rate: Int)

    /// The `Content-Type` sent.
    public var contentType: String {
        switch self {
        case .session: return "application/octet-stream"
        case .pcm16(let rate): return "audio/pcm;rate=\(rate)"
        case .l16(let rate): return "audio/L16;rate=\(rate)"
        }
    }
}

/// The server's 204 to an upload.
public struct UploadReceipt: Sendable, Equatable {
    /// `X-Accepted-Bytes`: bytes appended (0 for a resent chunk the server already held).
    public let acceptedBytes: Int
    /// `X-Acked-Sequence`: the highest `X-Sequence` held contiguously (sequenced uploads).
    public let ackedSequence: Int?

    public init(acceptedBytes: Int, ackedSequence: Int?) {
        self.acceptedBytes = acceptedBytes
        self.ackedSequence = ackedSequence
    }

    init(_ response: HTTPURLResponse) {
        self.init(
            acceptedBytes: response.value(forHTTPHeaderField: "X-Accepted-Bytes").flatMap(Int.init) ?? 0,
            ackedSequence: response.value(forHTTPHeaderField: "X-Acked-Sequence").flatMap(Int.init))
    }
}

/// A request body URLSession asks for with `urlSession(_:task:needNewBodyStream:)`.
protocol BodySource: AnyObject, Sendable {
    /// A stream of the body from its start, or `nil` when it cannot be had (again).
    func takeInputStream() -> InputStream?
}

/// A body in memory: a new stream of it for every attempt.
final class ReplayableBody: BodySource, @unchecked Sendable {  // immutable
    private let data: Data

    init(_ data: Data) {
        self.data = data
    }

    func takeInputStream() -> InputStream? {
        InputStream(data: data)
    }
}

/// The body of a streamed upload: audio is written in as it arrives, URLSession reads it
/// out through ``takeInputStream()`` and sends it chunked. Live audio cannot be replayed,
/// so it hands out its stream the first time only: a second request for the body (a
/// retry) gets `nil` and the task fails.
protocol StreamedBody: BodySource {
    /// Hands `data` over, waiting while too much is still unread. `false`: the body was
    /// closed (the server answered early, or the upload was cancelled); nothing was taken.
    func write(_ data: Data) async -> Bool
    /// The end of the audio: URLSession sends the final chunk.
    func finish()
    /// Abandons the body: reads fail, writes are refused.
    func cancel()
}

/// The body implementation for this platform.
func makeStreamedBody() -> StreamedBody {
    #if canImport(FoundationNetworking)
        return BlockingBody()
    #else
        return BoundPairBody()
    #endif
}

#if canImport(FoundationNetworking)
    /// The streamed body on Linux.
    ///
    /// swift-corelibs-foundation reads a body stream from libcurl's read callback, on the
    /// URLSession's work queue, and cannot wait for data: it ends the body (sends the final
    /// chunk) as soon as `hasBytesAvailable` is false or `read` returns 0. It has no
    /// `Stream.getBoundStreams` either. So the stream handed over (``PipeInputStream``)
    /// always reports bytes available while the body is open, and its `read` blocks until
    /// audio is written (or the body finishes: 0, or is cancelled: -1).
    ///
    /// Blocking stalls every transfer of that URLSession (one work queue runs them all), so
    /// on Linux each streamed upload runs on a URLSession of its own
    /// (``VoxwireClient/streamingUploadTransport()``).
    final class BlockingBody: StreamedBody, @unchecked Sendable {  // state under `condition`
        /// Unread bytes held before ``write(_:)`` waits.
        static let bufferLimit = 256 * 1024

        private let condition = NSCondition()
        private var chunks: [Data] = []
        private var offset = 0  // into chunks[0]
        private var buffered = 0
        private var finished = false
        private var cancelled = false
        private var taken = false
        private var spaceWaiters: [CheckedContinuation<Void, Never>] = []

        func takeInputStream() -> InputStream? {
            condition.lock()
            defer { condition.unlock() }
            if taken { return nil }
            taken = true
            return PipeInputStream(self)
        }

        // MARK: the writer's side

        func write(_ data: Data) async -> Bool {
            guard !data.isEmpty else { return !isClosed() }
            while true {
                switch admit(data) {
                case .taken: return true
                case .closed: return false
                case .full: await withCheckedContinuation { waitForSpace($0) }
                }
            }
        }

        private enum Admission { case taken, closed, full }

        private func admit(_ data: Data) -> Admission {
            condition.lock()
            defer { condition.unlock() }
            if cancelled || finished { return .closed }
            if buffered >= Self.bufferLimit { return .full }
            chunks.append(data)
            buffered += data.count
            condition.broadcast()
            return .taken
        }

        private func waitForSpace(_ continuation: CheckedContinuation<Void, Never>) {
            condition.lock()
            if buffered < Self.bufferLimit || cancelled || finished {
                condition.unlock()
                continuation.resume()
                return
            }
            spaceWaiters.append(continuation)
            condition.unlock()
        }

        private func isClosed() -> Bool {
            condition.lock()
            defer { condition.unlock() }
            return cancelled || finished
        }

        func finish() {
            condition.lock()
            finished = true
            let waiters = takeWaiters()
            condition.broadcast()
            condition.unlock()
            waiters.forEach { $0.resume() }
        }

        func cancel() {
            condition.lock()
            cancelled = true
            chunks.removeAll()
            buffered = 0
            let waiters = takeWaiters()
            condition.broadcast()
            condition.unlock()
            waiters.forEach { $0.resume() }
        }

        private func takeWaiters() -> [CheckedContinuation<Void, Never>] {
            defer { spaceWaiters.removeAll() }
            return spaceWaiters
        }

        // MARK: URLSession's side, through PipeInputStream

        var isOpen: Bool {
            condition.lock()
            defer { condition.unlock() }
            return !cancelled && (!finished || !chunks.isEmpty)
        }

        var isCancelled: Bool {
            condition.lock()
            defer { condition.unlock() }
            return cancelled
        }

        /// Blocks until there are bytes (their count), the end (0) or a cancellation (-1).
        func read(_ buffer: UnsafeMutablePointer<UInt8>, maxLength length: Int) -> Int {
            condition.lock()
            while chunks.isEmpty && !finished && !cancelled {
                condition.wait()
            }
            if cancelled {
                condition.unlock()
                return -1
            }
            var count = 0
            while count < length, let first = chunks.first {
                let n = min(length - count, first.count - offset)
                first.withUnsafeBytes { raw in
                    let start = raw.baseAddress!.assumingMemoryBound(to: UInt8.self) + offset
                    (buffer + count).update(from: start, count: n)
                }
                count += n
                offset += n
                if offset == first.count {
                    chunks.removeFirst()
                    offset = 0
                }
            }
            buffered -= count
            let waiters = buffered < Self.bufferLimit ? takeWaiters() : []
            condition.unlock()
            waiters.forEach { $0.resume() }
            return count
        }
    }

    /// The InputStream corelibs reads a ``BlockingBody`` through.
    final class PipeInputStream: InputStream {
        private let body: BlockingBody
        private var status: Stream.Status = .notOpen  // only touched on URLSession's queue

        init(_ body: BlockingBody) {
            self.body = body
            super.init(data: Data())
        }

        override func open() {
            if status == .notOpen { status = .open }
        }

        override func close() {
            status = .closed
        }

        override var streamStatus: Stream.Status { status }

        override var streamError: Error? {
            body.isCancelled ? URLError(.cancelled) : nil
        }

        /// True while the body is open: corelibs ends the body when this is false.
        override var hasBytesAvailable: Bool { body.isOpen }

        override func read(_ buffer: UnsafeMutablePointer<UInt8>, maxLength length: Int) -> Int {
            let count = body.read(buffer, maxLength: length)
            if count <= 0 { status = count == 0 ? .atEnd : .error }
            return count
        }
    }
#else
    /// Apple's way to stream a request body (URLSession's "Uploading streams of data"): a
    /// bound pair of streams; URLSession reads the input side, and the audio is written into
    /// the output side on a serial queue of its own (a write waits while the pair's buffer is
    /// full).
    final class BoundPairBody: StreamedBody, @unchecked Sendable {  // state under `lock`
        private let input: InputStream
        private let output: OutputStream
        private let queue = DispatchQueue(label: "voxwire.upload.body")
        private let lock = NSLock()
        private var closed = false
        private var taken = false

        init() {
            var input: InputStream?
            var output: OutputStream?
            Stream.getBoundStreams(withBufferSize: 64 * 1024, inputStream: &input, outputStream: &output)
            self.input = input!
            self.output = output!
            self.output.open()
        }

        func takeInputStream() -> InputStream? {
            lock.lock()
            defer { lock.unlock() }
            if taken { return nil }
            taken = true
            return input
        }

        func write(_ data: Data) async -> Bool {
            await withCheckedContinuation { continuation in
                queue.async { continuation.resume(returning: self.writeAll(data)) }
            }
        }

        private var isClosed: Bool {
            lock.lock()
            defer { lock.unlock() }
            return closed
        }

        /// On `queue`: all of `data` into the pair, or `false` once it is closed.
        private func writeAll(_ data: Data) -> Bool {
            data.withUnsafeBytes { raw -> Bool in
                guard let base = raw.baseAddress?.assumingMemoryBound(to: UInt8.self) else {
                    return !isClosed
                }
                var offset = 0
                while offset < raw.count {
                    if isClosed { return false }
                    let n = output.write(base + offset, maxLength: raw.count - offset)
                    if n < 0 { return false }  // URLSession closed its side: the request ended
                    if n == 0 {
                        Thread.sleep(forTimeInterval: 0.005)  // full: URLSession reads on
                        continue
                    }
                    offset += n
                }
                return true
            }
        }

        func finish() {
            queue.async { self.output.close() }  // after the writes queued before it
        }

        func cancel() {
            lock.lock()
            closed = true
            lock.unlock()
            queue.async { self.output.close() }
        }
    }
#endif

/// Collects the response to a streamed upload and reports it once the task ends.
final class UploadReceiver: StreamingReceiver {
    private let onErrorStatus: @Sendable () -> Void
    private let done: @Sendable (Result<(HTTPURLResponse, Data), Error>) -> Void
    private var response: HTTPURLResponse?
    private var body = Data()

    /// - Parameters:
    ///   - onErrorStatus: the server answered an error status before the body ended (it
    ///     decides 415 from the headers, 429 or 413 mid-body): stop writing.
    ///   - done: the response and its body, or the transport error.
    init(
        onErrorStatus: @escaping @Sendable () -> Void,
        done: @escaping @Sendable (Result<(HTTPURLResponse, Data), Error>) -> Void
    ) {
        self.onErrorStatus = onErrorStatus
        self.done = done
    }

    func receive(response: HTTPURLResponse) {
        self.response = response
        if !(200..<300).contains(response.statusCode) { onErrorStatus() }
    }

    func receive(data: Data) {
        body.append(data)
    }

    func complete(error: Error?) {
        // An error status answered early can be followed by a transport error (the server
        // closes the connection while the body is still being sent): the status is the news.
        if let response, error == nil || !(200..<300).contains(response.statusCode) {
            done(.success((response, body)))
        } else {
            done(.failure(error ?? VoxwireClientError.invalidResponse("no response to the upload")))
        }
    }
}

/// A value set once and awaited (by any number of tasks).
final class OneShot<Value: Sendable>: @unchecked Sendable {  // state under `lock`
    private let lock = NSLock()
    private var value: Value?
    private var waiters: [CheckedContinuation<Value, Never>] = []

    func fulfil(_ newValue: Value) {
        lock.lock()
        guard value == nil else {
            lock.unlock()
            return
        }
        value = newValue
        let waiting = waiters
        waiters.removeAll()
        lock.unlock()
        waiting.forEach { $0.resume(returning: newValue) }
    }

    func wait() async -> Value {
        await withCheckedContinuation { enqueue($0) }
    }

    private func enqueue(_ continuation: CheckedContinuation<Value, Never>) {
        lock.lock()
        if let value {
            lock.unlock()
            continuation.resume(returning: value)
            return
        }
        waiters.append(continuation)
        lock.unlock()
    }
}
