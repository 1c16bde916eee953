import Foundation

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
            session: client.urlSession, endpoint: endpoint, inputSampleRate: info.inputSampleRate)
    }

    // MARK: audio up

    /// Queues microphone audio: PCM16 little-endian mono at ``SessionInfo/inputSampleRate``,
    /// any length. It goes out in 100 ms chunks; see ``AudioUploader`` for ordering, retries
    /// and what happens when the network falls behind.
    public func sendAudio(_ pcm: Data) async throws {
        try await uploader.append(pcm)
    }

    // MARK: voice and events down

    /// The assistant's voice: one `GET stream_audio`, decoded into frames as bytes arrive.
    ///
    /// The stream ends when the session is closed (or another `audioStream()` takes over:
    /// the server ends the older response). It is not reconnected automatically: a network
    /// error ends it with that error, and calling `audioStream()` again resumes the live
    /// audio. Cancelling the task that iterates it cancels the request.
    public func audioStream() -> AsyncThrowingStream<AudioFrame, Error> {
        AsyncThrowingStream(bufferingPolicy: .bufferingNewest(250)) { continuation in
            let receiver = AudioStreamReceiver(continuation)
            let task = client.router.start(
                Requests.streamAudio(endpoint), on: client.urlSession, receiver: receiver)
            continuation.onTermination = { _ in task.cancel() }
        }
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

    // MARK: client events

    /// Sends client events (`POST events`, a JSON array), validated all before any applies.
    /// - Returns: how many the server accepted.
    @discardableResult
    public func send(events: [JSONValue]) async throws -> Int {
        let body = try JSONEncoder().encode(events)
        let (data, response) = try await client.urlSession.data(
            for: Requests.clientEvents(endpoint, body: body))
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
