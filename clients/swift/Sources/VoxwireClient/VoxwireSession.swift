import Foundation

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// One voice session: audio up, the assistant's voice and events down.
///
/// Open ``events(resumingAfter:)`` and ``audioStream()`` first, then send microphone audio
/// with ``sendAudio(_:)``. The server detects turns, transcribes and answers; its voice
/// arrives on the audio stream, and everything it does on the event stream.
///
/// ```swift
/// let events = session.events()
/// let voice = session.audioStream()
/// try await session.sendAudio(pcm16)       // as the microphone delivers it
/// for try await frame in voice { play(frame.samples, at: frame.sampleRate) }
/// try await session.close()
/// ```
public final class VoxwireSession: @unchecked Sendable {  // immutable after init
    /// What the server answered at creation (id, token, urls, config).
    public let info: SessionInfo
    /// The upload queue behind ``sendAudio(_:)``.
    public let uploader: AudioUploader
    let client: VoxwireClient
    let endpoint: Endpoint

    /// The session id (`sess_…`).
    public var id: String { info.id }

    init(client: VoxwireClient, info: SessionInfo) {
        self.client = client
        self.info = info
        self.endpoint = Endpoint(baseURL: client.baseURL, urls: info.urls, token: info.token)
        self.uploader = AudioUploader(
            session: client.urlSession, router: client.router, endpoint: endpoint,
            inputSampleRate: info.inputSampleRate)
    }

    // MARK: audio up

    /// Queues microphone audio: PCM16 little-endian mono at ``SessionInfo/inputSampleRate``,
    /// any length. It goes out in 100 ms chunks; see ``AudioUploader`` for ordering, retries
    /// and what happens when the network falls behind.
    public func sendAudio(_ pcm: Data) async throws {
        try await uploader.append(pcm)
    }

    /// Sends audio as one long `upload_audio` request whose body is written as `audio`
    /// produces it (URLSession sends it chunked: `Transfer-Encoding: chunked`), and returns
    /// when the server has answered, after the sequence ended.
    ///
    /// The server consumes the body as it arrives, so this suits a live source (a microphone
    /// feeding an `AsyncStream<Data>`) as well as a file. Pieces may have any length (odd
    /// byte counts too). Unlike ``sendAudio(_:)`` nothing is resent: a live body cannot be
    /// replayed, so a network error throws, and a server error throws ``VoxwireError`` with
    /// ``VoxwireError/acceptedBytes`` (what was kept, everything before the error) and, for
    /// 429, ``VoxwireError/retryAfter``. An error the server decides from the headers (415:
    /// a format it does not take) ends the request before any audio is sent.
    ///
    /// Do not run it alongside ``sendAudio(_:)``: the server takes one upload at a time per
    /// session (a second one waits, then gets 409 `upload_in_progress`).
    ///
    /// - Parameters:
    ///   - audio: PCM16 mono in `format`; the request ends when the sequence does.
    ///   - format: the body's `Content-Type` (default: little-endian at the session's input rate).
    /// - Returns: the server's receipt (`acceptedBytes`: all of it).
    public func sendAudioStream<Audio: AsyncSequence>(
        _ audio: Audio, format: AudioUploadFormat = .session
    ) async throws -> UploadReceipt where Audio.Element == Data {
        let request = UnreplayedRequests.uploadAudioStream(endpoint, contentType: format.contentType)
        let transport = client.streamingUploadTransport()
        defer {
            if transport.dedicated { transport.session.finishTasksAndInvalidate() }
        }
        let body = makeStreamedBody()
        let outcome = OneShot<Result<(HTTPURLResponse, Data), Error>>()
        // Once the request is over (an early error status, a lost connection, or done),
        // the body takes no more audio, so a live source's loop below ends too.
        let receiver = UploadReceiver(
            onErrorStatus: { body.cancel() },
            done: {
                outcome.fulfil($0)
                body.cancel()
            })
        let holder = TaskHolder()
        return try await withTaskCancellationHandler {
            holder.set(
                transport.router.startUpload(
                    request, body: body, on: transport.session, receiver: receiver))
            do {
                for try await pcm in audio {
                    guard await body.write(pcm) else { break }  // the request is over
                }
                body.finish()
            } catch {
                body.cancel()  // the audio source failed: abandon the request
                holder.cancel()
                _ = await outcome.wait()
                throw error
            }
            let (response, data) = try await outcome.wait().get()
            guard (200..<300).contains(response.statusCode) else {
                throw VoxwireError(response: response, body: data)
            }
            return UploadReceipt(response)
        } onCancel: {
            body.cancel()
            holder.cancel()
        }
    }

    /// One sequenced `upload_audio` request (`X-Sequence: sequence`), for an app that keeps
    /// its own queue of chunks (say, persisted across a relaunch) instead of ``sendAudio(_:)``;
    /// do not mix the two, the uploader numbers its chunks from 0.
    ///
    /// Sequences start at 0. Resending a number the server already holds is harmless: 204
    /// with ``UploadReceipt/acceptedBytes`` 0. Skipping one throws ``VoxwireError`` 409
    /// `sequence_gap` (its message names the number expected). A chunk is at most 1 MiB.
    @discardableResult
    public func uploadChunk(_ pcm: Data, sequence: Int) async throws -> UploadReceipt {
        let request = Requests.uploadAudio(endpoint, sequence: sequence)
        let (data, response) = try await client.urlSession.voxwireUpload(
            request, from: pcm, router: client.router)
        return UploadReceipt(try HTTP.checked(response, body: data, expected: 204))
    }

    // MARK: voice and events down

    /// The assistant's voice: `GET stream_audio`, decoded into frames as bytes arrive, and
    /// resumed after a lost connection.
    ///
    /// The client tracks the stream's timeline position received (`X-Stream-Position-Ms` plus
    /// the samples after the header and the lead padding). A network error (or a proxy's
    /// 502/503/504) reconnects with exponential backoff and full jitter (0.25 s doubling to
    /// 5 s, at most 8 failed attempts in a row) and `?from_ms=` that position: the server
    /// replays from its buffer (3 s), the overlap already delivered is dropped, and the
    /// frames continue with no gap or repeat. If the drop outlasted the buffer the server
    /// answers `X-Stream-Resumed: false` and starts live: the next frame's
    /// ``AudioFrame/gapBefore`` says what was lost.
    ///
    /// The stream ends when the session is closed (or another `audioStream()` takes over:
    /// the server ends the older response), and throws ``VoxwireError`` on any other HTTP
    /// error (404: the session is gone) or the last network error once the attempts are
    /// spent. Cancelling the task that iterates it cancels the request.
    public func audioStream() -> AsyncThrowingStream<AudioFrame, Error> {
        AsyncThrowingStream(bufferingPolicy: .bufferingNewest(250)) { continuation in
            let loop = Task { await self.runAudioStream(into: continuation) }
            continuation.onTermination = { _ in loop.cancel() }
        }
    }

    private func runAudioStream(into continuation: AsyncThrowingStream<AudioFrame, Error>.Continuation) async {
        var timeline = AudioTimeline()
        var failures = 0
        while !Task.isCancelled {
            let request = Requests.streamAudio(endpoint, fromMs: timeline.receivedMs)
            let holder = TaskHolder()
            let outcome = await withTaskCancellationHandler {
                await withCheckedContinuation { (done: CheckedContinuation<AudioStreamReceiver.Outcome, Never>) in
                    let receiver = AudioStreamReceiver(
                        timeline: timeline, continuation: continuation,
                        done: { done.resume(returning: $0) })
                    holder.set(client.router.start(request, on: client.urlSession, receiver: receiver))
                }
            } onCancel: {
                holder.cancel()
            }
            timeline = outcome.timeline
            if outcome.connected { failures = 0 }
            if Task.isCancelled { break }
            let error: Error
            var retryAfter: TimeInterval?
            switch outcome.end {
            case .clean:
                continuation.finish()  // the session was closed, or a takeover
                return
            case .failed(let failure):
                continuation.finish(throwing: failure)
                return
            case .refused(let refusal):
                guard AudioStreamReconnect.retryableStatuses.contains(refusal.status) else {
                    continuation.finish(throwing: refusal)  // 404: the session is gone
                    return
                }
                error = refusal
                retryAfter = refusal.retryAfter
            case .dropped(let failure):
                guard AudioStreamReconnect.isTransient(failure) else {
                    continuation.finish(throwing: failure)
                    return
                }
                error = failure
            }
            failures += 1
            guard failures <= AudioStreamReconnect.maxAttempts else {
                continuation.finish(throwing: error)
                return
            }
            let delay = max(AudioStreamReconnect.delay(attempt: failures), retryAfter ?? 0)
            try? await Task.sleep(nanoseconds: UInt64(delay * 1_000_000_000))
        }
        continuation.finish()
    }

    /// The session's server events: one `GET events`, reconnected after network errors.
    ///
    /// A dropped connection is reopened after the server's `retry` delay (1 s) with
    /// `Last-Event-ID`, so no event is lost or repeated. The sequence ends when the server
    /// ends the stream (the session was closed), and throws on an HTTP error (404: the
    /// session is gone).
    ///
    /// - Parameter lastEventID: resume after this event id (`nil`: from the oldest held, so
    ///   `session.created` is seen).
    public func events(resumingAfter lastEventID: Int? = nil) -> AsyncThrowingStream<VoxwireEvent, Error> {
        AsyncThrowingStream { continuation in
            let loop = Task { await self.runEvents(after: lastEventID, into: continuation) }
            continuation.onTermination = { _ in loop.cancel() }
        }
    }

    private func runEvents(
        after lastEventID: Int?, into continuation: AsyncThrowingStream<VoxwireEvent, Error>.Continuation
    ) async {
        var lastEventID = lastEventID
        var retryMilliseconds = 1000
        while !Task.isCancelled {
            let holder = TaskHolder()
            let outcome = await withTaskCancellationHandler {
                await withCheckedContinuation { (done: CheckedContinuation<EventsReceiver.Outcome, Never>) in
                    let receiver = EventsReceiver(
                        lastEventID: lastEventID, continuation: continuation,
                        done: { done.resume(returning: $0) })
                    holder.set(
                        client.router.start(
                            Requests.events(endpoint, lastEventID: lastEventID),
                            on: client.urlSession, receiver: receiver))
                }
            } onCancel: {
                holder.cancel()
            }
            lastEventID = outcome.lastEventID ?? lastEventID
            retryMilliseconds = outcome.retryMilliseconds ?? retryMilliseconds
            guard let error = outcome.error else {
                continuation.finish()  // ended by the server: the session is closed
                return
            }
            if outcome.isHTTPError || Task.isCancelled {
                continuation.finish(throwing: error)
                return
            }
            try? await Task.sleep(nanoseconds: UInt64(retryMilliseconds) * 1_000_000)
        }
        continuation.finish()
    }

    /// Ends the open ``audioStream()`` response cleanly (`POST stop_stream`): the stream's
    /// sequence finishes, as it does when the session is closed, and nothing reconnects.
    /// - Returns: whether a stream was open (idempotent: `false` the second time).
    @discardableResult
    public func stopStream() async throws -> Bool {
        let (data, response) = try await client.urlSession.data(
            for: UnreplayedRequests.stopStream(endpoint))
        _ = try HTTP.checked(response, body: data, expected: 200)
        return try JSONDecoder().decode(JSONValue.self, from: data)["stopped"]?.boolValue ?? false
    }

    // MARK: client events

    /// Sends client events (`POST events`, a JSON array), validated all before any applies.
    /// - Returns: how many the server accepted.
    @discardableResult
    public func send(events: [JSONValue]) async throws -> Int {
        let body = try JSONEncoder().encode(events)
        let (data, response) = try await client.perform(Requests.clientEvents(endpoint, body: body))
        _ = try HTTP.checked(response, body: data, expected: 200)
        let answer = try JSONDecoder().decode(JSONValue.self, from: data)
        return answer["accepted"]?.intValue ?? events.count
    }

    /// Ends the user's turn now (push-to-talk), after uploading the audio buffered so far.
    public func commit() async throws {
        try await uploader.flush()
        try await send(events: [["type": "input_audio_buffer.commit"]])
    }

    /// Stops the reply being spoken, as a barge-in would (`response.done` `cancelled`).
    public func cancelResponse() async throws {
        try await send(events: [["type": "response.cancel"]])
    }

    // MARK: closing

    /// Deletes the session (`DELETE`): uploads stop, and the server ends the audio and
    /// event streams cleanly, which finishes their sequences. Closing twice is harmless.
    public func close() async throws {
        await uploader.close()
        let (data, response) = try await client.urlSession.data(for: Requests.deleteSession(endpoint))
        if (response as? HTTPURLResponse)?.statusCode == 404 { return }  // already gone
        _ = try HTTP.checked(response, body: data, expected: 204)
    }
}
