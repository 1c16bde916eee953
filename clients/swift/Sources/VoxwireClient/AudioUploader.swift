import Foundation

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// Sends microphone audio to `upload_audio` as 100 ms chunks, one request at a time, in order.
///
/// Audio of any length goes in with ``append(_:)``; it is cut into chunks of exactly
/// ``chunkBytes`` (100 ms of PCM16 LE mono at the session's input rate: 3200 bytes at 16 kHz),
/// numbered 0, 1, 2… in `X-Sequence`, and each is sent with `URLSession.uploadTask(with:from:)`.
/// Only one upload is in flight; the next starts when the previous one was acknowledged (204).
///
/// Failures:
/// - **429** (the server's pipeline is behind): wait `Retry-After`, resend the same chunk.
/// - **Network errors, 408/502/503/504**: back off (0.25 s, doubling to 4 s) and resend the same
///   `X-Sequence`, up to ``maxRetries`` times. Resending is safe: if the lost attempt had
///   arrived, the server answers 204 with `X-Accepted-Bytes: 0` and appends nothing. Any
///   `URLError` but a cancellation, a bad URL or a TLS refusal counts (on Linux a lost
///   response is `.badServerResponse` or `.unknown`, not `.networkConnectionLost`).
/// - **Any other status** (404 session gone, 409, 413...) is final: the uploader stops, and
///   ``append(_:)`` and ``flush()`` throw that ``VoxwireError`` from then on.
///
/// Backpressure: a microphone cannot be paused, so ``append(_:)`` never waits. While uploads
/// are stuck (a retry loop, a slow network), chunks queue up to ``maxPendingChunks`` (5 s of
/// audio). Beyond that `append` throws ``VoxwireClientError/uploadBacklogFull(pendingChunks:)``
/// and does not take the audio: the app learns that its speech is not getting through, the
/// queued speech is kept (it is older, and still sent in order), and latency stops growing.
/// Refused audio consumes no sequence number, so the server still sees contiguous sequences.
public actor AudioUploader {
    /// Duration of one chunk: what phone and browser clients typically send.
    public static let chunkMilliseconds = 100
    /// Chunks held before ``append(_:)`` refuses audio (5 s).
    public static let maxPendingChunks = 50
    /// Resends of one chunk after network errors before giving up.
    public static let maxRetries = 8

    /// Bytes in one full chunk: `inputSampleRate * chunkMilliseconds / 1000` PCM16 samples.
    public nonisolated let chunkBytes: Int
    /// The highest `X-Sequence` the server holds contiguously (`X-Acked-Sequence`).
    public private(set) var ackedSequence: Int?
    /// Chunks queued or in flight.
    public var pendingChunks: Int { pending.count }

    private struct Chunk {
        let sequence: Int
        let body: Data
    }

    private let session: URLSession
    private let router: DataTaskRouter
    private let endpoint: Endpoint
    private var buffer = Data()
    private var pending: [Chunk] = []
    private var nextSequence = 0
    private var failure: Error?
    private var isClosed = false
    private var pump: Task<Void, Never>?
    private var wake: CheckedContinuation<Void, Never>?
    private var drainWaiters: [CheckedContinuation<Void, Error>] = []

    init(session: URLSession, router: DataTaskRouter, endpoint: Endpoint, inputSampleRate: Int) {
        self.session = session
        self.router = router
        self.endpoint = endpoint
        self.chunkBytes = inputSampleRate * Self.chunkMilliseconds / 1000 * MemoryLayout<Int16>.size
    }

    /// Queues PCM16 LE mono at the session's input rate, of any length (odd byte counts too).
    ///
    /// - Throws: ``VoxwireClientError/uploadBacklogFull(pendingChunks:)`` (nothing queued),
    ///   ``VoxwireClientError/closed``, or the error that stopped the uploader.
    public func append(_ pcm: Data) throws {
        if let failure { throw failure }
        if isClosed { throw VoxwireClientError.closed }
        let newChunks = (buffer.count + pcm.count) / chunkBytes
        guard pending.count + newChunks <= Self.maxPendingChunks else {
            throw VoxwireClientError.uploadBacklogFull(pendingChunks: pending.count)
        }
        buffer.append(pcm)
        while buffer.count >= chunkBytes {
            enqueue(Data(buffer.prefix(chunkBytes)))
            buffer = Data(buffer.dropFirst(chunkBytes))
        }
    }

    /// Sends what is buffered (a last chunk shorter than 100 ms), then waits until the server
    /// has acknowledged every chunk. Call it before `input_audio_buffer.commit`.
    public func flush() async throws {
        if let failure { throw failure }
        if !buffer.isEmpty {
            enqueue(buffer)
            buffer = Data()
        }
        guard !pending.isEmpty else { return }
        try await withCheckedThrowingContinuation { drainWaiters.append($0) }
    }

    /// Stops sending; queued chunks are dropped and the request in flight is cancelled.
    public func close() {
        isClosed = true
        pump?.cancel()
        pending.removeAll()
        wake?.resume()
        wake = nil
        finishDrainWaiters(throwing: VoxwireClientError.closed)
    }

    private func enqueue(_ body: Data) {
        pending.append(Chunk(sequence: nextSequence, body: body))
        nextSequence += 1
        if pump == nil {
            pump = Task { await self.run() }
        }
        wake?.resume()
        wake = nil
    }

    /// The one loop that sends: strictly one request in flight, in sequence order.
    private func run() async {
        while !isClosed {
            guard let chunk = pending.first else {
                await withCheckedContinuation { wake = $0 }
                continue
            }
            do {
                try await deliver(chunk)
            } catch {
                if !isClosed {
                    failure = error
                    finishDrainWaiters(throwing: error)
                }
                return
            }
            if isClosed { return }  // close() emptied the queue while this chunk was sent
            pending.removeFirst()
            if pending.isEmpty {
                finishDrainWaiters(throwing: nil)
            }
        }
    }

    /// Sends one chunk until the server has it (see the type's documentation for retries).
    private func deliver(_ chunk: Chunk) async throws {
        var failures = 0
        while true {
            try Task.checkCancellation()
            let request = Requests.uploadAudio(endpoint, sequence: chunk.sequence)
            let answer: (Data, HTTPURLResponse)
            do {
                answer = try await session.voxwireUpload(request, from: chunk.body, router: router)
            } catch where NetworkFailure.isTransient(error) {
                // The chunk may or may not have arrived: resending it is safe either way.
                failures += 1
                guard failures <= Self.maxRetries else { throw error }
                try await Self.sleep(seconds: Self.backoff(failures))
                continue
            }
            let (body, response) = answer
            switch response.statusCode {
            case 200..<300:
                let acked = response.value(forHTTPHeaderField: "X-Acked-Sequence").flatMap(Int.init)
                ackedSequence = acked ?? chunk.sequence
                return
            case 429:
                let error = VoxwireError(response: response, body: body)
                try await Self.sleep(seconds: error.retryAfter ?? 1)
            case 408, 502, 503, 504:  // 408: the body did not arrive whole; resending is safe
                let error = VoxwireError(response: response, body: body)
                failures += 1
                guard failures <= Self.maxRetries else { throw error }
                try await Self.sleep(seconds: error.retryAfter ?? Self.backoff(failures))
            default:
                throw VoxwireError(response: response, body: body)
            }
        }
    }

    private func finishDrainWaiters(throwing error: Error?) {
        let waiters = drainWaiters
        drainWaiters.removeAll()
        for waiter in waiters {
            if let error { waiter.resume(throwing: error) } else { waiter.resume() }
        }
    }

    private static func backoff(_ failures: Int) -> TimeInterval {
        min(4, 0.25 * pow(2, Double(failures - 1)))
    }

    private static func sleep(seconds: TimeInterval) async throws {
        try await Task.sleep(nanoseconds: UInt64(max(0, seconds) * 1_000_000_000))
    }
}

extension URLSession {
    /// One chunk upload as an async call; cancelling the calling task cancels the upload.
    ///
    /// On Apple platforms: `uploadTask(with:from:completionHandler:)`, sent with a
    /// `Content-Length`. On Linux that would break on a reused connection:
    /// swift-corelibs-foundation cannot rewind a `Data` body, so when libcurl resends a
    /// request after a kept-alive connection died (it does so by itself when nothing was
    /// received yet), it sends the headers and no body at all, and the server answers 408
    /// after its 10 s idle timeout. There the chunk goes as a body stream that `router`
    /// hands out again for each attempt (`needNewBodyStream`): a `dataTask` whose body is
    /// sent chunked.
    func voxwireUpload(
        _ request: URLRequest, from body: Data, router: DataTaskRouter
    ) async throws -> (Data, HTTPURLResponse) {
        let holder = TaskHolder()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                #if canImport(FoundationNetworking)
                    let receiver = UploadReceiver(onErrorStatus: {}) { outcome in
                        continuation.resume(with: outcome.map { ($0.1, $0.0) })
                    }
                    holder.set(router.startUpload(request, replaying: body, on: self, receiver: receiver))
                #else
                    let task = uploadTask(with: request, from: body) { data, response, error in
                        if let error {
                            continuation.resume(throwing: error)
                        } else if let http = response as? HTTPURLResponse {
                            continuation.resume(returning: (data ?? Data(), http))
                        } else {
                            continuation.resume(throwing: VoxwireClientError.invalidResponse("not HTTP"))
                        }
                    }
                    holder.set(task)
                    task.resume()
                #endif
            }
        } onCancel: {
            holder.cancel()
        }
    }
}

/// A URLSession task that may be cancelled before it exists (cancellation races creation).
final class TaskHolder: @unchecked Sendable {
    private let lock = NSLock()
    private var task: URLSessionTask?
    private var cancelled = false

    func set(_ task: URLSessionTask) {
        lock.lock()
        self.task = task
        let cancelNow = cancelled
        lock.unlock()
        if cancelNow { task.cancel() }
    }

    func cancel() {
        lock.lock()
        cancelled = true
        let task = self.task
        lock.unlock()
        task?.cancel()
    }
}
