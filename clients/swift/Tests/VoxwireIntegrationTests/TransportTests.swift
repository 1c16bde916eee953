import Foundation
import VoxwireClient
import XCTest

/// The transport against the real server, with the `loopback` responder (16 kHz in and
/// out: the server plays the uploaded samples back bit for bit), so every sample can be
/// accounted for: nothing lost, nothing repeated, across retries and reconnects.
final class TransportTests: IntegrationTestCase {
    private func loopbackSession() async throws -> VoxwireSession {
        try await client.createSession(config: ["responder": "loopback"])
    }

    /// The samples of `voice` that are not silence: the uploaded ramp, if all went well.
    private func played(_ voice: StreamRecorder) -> [Int16] {
        voice.samples.filter { $0 != 0 }
    }

    private func waitUntilPlayed(_ voice: StreamRecorder, _ count: Int, timeout: TimeInterval = 15) async throws {
        try await voice.wait(timeout: timeout, what: "\(count) samples played back") {
            $0.samples.lazy.filter { $0 != 0 }.count >= count
        }
    }

    func testStopStreamEndsTheAudioStreamCleanly() async throws {
        let session = try await loopbackSession()
        let voice = StreamRecorder(session.audioStream())
        try await voice.wait(what: "the first frame") { !$0.samples.isEmpty }
        let stopped = try await session.stopStream()
        XCTAssertTrue(stopped)
        assertClean(try await voice.waitForEnd(timeout: 3), "a clean end, no reconnect")
        let again = try await session.stopStream()
        XCTAssertFalse(again, "idempotent: no stream open any more")
        XCTAssertEqual(relay.requestHeads.filter { $0.contains("/stream_audio") }.count, 1, "no reconnect")

        // A new stream can be opened afterwards, and plays.
        let next = StreamRecorder(session.audioStream())
        try await next.wait(what: "the first frame") { !$0.samples.isEmpty }
        try await session.sendAudio(Audio.bytes(Audio.ramp(samples: 512 * 6)))
        try await session.uploader.flush()
        try await waitUntilPlayed(next, 512 * 6)
        try await session.close()
        assertClean(try await next.waitForEnd(), "next ended cleanly")
    }

    /// `X-Sequence` retries: a resend of a held number appends nothing; a gap is refused.
    func testSequencedUploadsDuplicateAndGap() async throws {
        let session = try await loopbackSession()
        let voice = StreamRecorder(session.audioStream())
        try await voice.wait(what: "the first frame") { !$0.samples.isEmpty }
        let ramp = Audio.ramp(samples: 2048)  // four of the server's 512-sample frames
        let (c0, c1) = (Audio.bytes(Array(ramp[..<1024])), Audio.bytes(Array(ramp[1024...])))

        let first = try await session.uploadChunk(c0, sequence: 0)
        XCTAssertEqual(first, UploadReceipt(acceptedBytes: 2048, ackedSequence: 0))
        let resent = try await session.uploadChunk(c0, sequence: 0)
        XCTAssertEqual(resent, UploadReceipt(acceptedBytes: 0, ackedSequence: 0), "a retry: nothing appended")
        let gap = await voxwireError("a gap") { try await session.uploadChunk(c1, sequence: 2) }
        XCTAssertEqual(gap?.status, 409)
        XCTAssertEqual(gap?.code, "sequence_gap")
        XCTAssertEqual(gap?.param, "X-Sequence")
        XCTAssertTrue(gap?.message.contains("expected X-Sequence 1") ?? false, gap?.message ?? "")
        let second = try await session.uploadChunk(c1, sequence: 1)
        XCTAssertEqual(second, UploadReceipt(acceptedBytes: 2048, ackedSequence: 1))

        try await waitUntilPlayed(voice, ramp.count)
        try await Task.sleep(nanoseconds: 300_000_000)
        XCTAssertEqual(played(voice), ramp, "each chunk played once, in order")
        try await session.close()
    }

    /// The uploader's own retry: the response to chunk 5 is lost on the way back; the
    /// chunk is sent again with the same `X-Sequence`, and the server keeps it once.
    func testTheUploaderResendsAChunkWhoseResponseWasLost() async throws {
        let session = try await loopbackSession()
        let voice = StreamRecorder(session.audioStream())
        try await voice.wait(what: "the first frame") { !$0.samples.isEmpty }
        let ramp = Audio.ramp(samples: 1600 * 16)  // 16 chunks, 50 server frames
        let pieces = Audio.pieces(Audio.bytes(ramp))
        let pacer = Pacer()
        for (index, piece) in pieces.enumerated() {
            await pacer.tick()
            if index == 5 {
                let deadline = Date().addingTimeInterval(5)
                while await session.uploader.ackedSequence != 4, Date() < deadline {
                    try await Task.sleep(nanoseconds: 5_000_000)
                }
                relay.loseNextResponse(toRequestContaining: "/upload_audio")
            }
            try await session.sendAudio(piece)
        }
        try await session.uploader.flush()
        let acked = await session.uploader.ackedSequence
        XCTAssertEqual(acked, 15)
        let sequences = relay.requestHeads.filter { $0.contains("/upload_audio ") }
            .compactMap { header("X-Sequence", in: $0) }
        XCTAssertEqual(sequences.filter { $0 == "5" }.count, 2, "chunk 5 sent twice: \(sequences)")
        XCTAssertEqual(Set(sequences), Set((0..<16).map(String.init)))

        try await waitUntilPlayed(voice, ramp.count)
        try await Task.sleep(nanoseconds: 300_000_000)
        XCTAssertEqual(played(voice), ramp, "the resent chunk is not played twice")
        try await session.close()
    }

    /// The audio stream's connection is lost mid-playback; the client reconnects with
    /// `?from_ms=` and the samples go on with no gap and no repeat.
    func testTheAudioStreamResumesAfterADrop() async throws {
        let session = try await loopbackSession()
        let voice = StreamRecorder(session.audioStream())
        try await voice.wait(what: "the first frame") { !$0.samples.isEmpty }
        let ramp = Audio.ramp(samples: 512 * 94)  // 3 s
        let pacer = Pacer()
        var dropped = 0
        for piece in Audio.pieces(Audio.bytes(ramp)) {
            await pacer.tick()
            try await session.sendAudio(piece)
            if dropped == 0, voice.loudSamples >= Audio.rate {  // 1 s of it played
                dropped = relay.drop(requestsContaining: "/stream_audio")
            }
        }
        try await session.uploader.flush()  // the last, shorter chunk
        XCTAssertEqual(dropped, 1, "the stream's connection was cut")
        try await waitUntilPlayed(voice, ramp.count)
        try await Task.sleep(nanoseconds: 300_000_000)

        let streams = relay.requestHeads.filter { $0.contains("/stream_audio") }
        XCTAssertEqual(streams.count, 2, "\(streams)")
        XCTAssertTrue(streams.last?.contains("/stream_audio?from_ms=") ?? false, "\(streams)")
        let got = played(voice)
        XCTAssertEqual(got.count, ramp.count, "no gap, no repeat")
        XCTAssertEqual(got, ramp)
        XCTAssertEqual(voice.gaps, [], "resumed within the server's buffer: nothing lost")
        XCTAssertNil(voice.end, "the stream goes on")
        try await session.close()
        assertClean(try await voice.waitForEnd(), "voice ended cleanly")
    }

    /// `sendAudioStream` with RFC 2586 `audio/L16` (big-endian): played back as sent.
    func testAStreamedUploadInL16IsTakenBigEndian() async throws {
        let session = try await loopbackSession()
        let voice = StreamRecorder(session.audioStream())
        try await voice.wait(what: "the first frame") { !$0.samples.isEmpty }
        let ramp = Audio.ramp(samples: 512 * 20)
        let pieces = Audio.pieces(Audio.bytes(ramp, bigEndian: true), bytes: 1001)  // odd splits
        let body = AsyncStream<Data> { continuation in
            for piece in pieces { continuation.yield(piece) }
            continuation.finish()
        }
        let receipt = try await session.sendAudioStream(body, format: .l16(rate: 16000))
        XCTAssertEqual(receipt.acceptedBytes, ramp.count * 2)
        try await waitUntilPlayed(voice, ramp.count)
        try await Task.sleep(nanoseconds: 200_000_000)
        XCTAssertEqual(played(voice), ramp)
        let head = try XCTUnwrap(relay.requestHeads.last { $0.contains("/upload_audio ") })
        XCTAssertEqual(header("Content-Type", in: head), "audio/L16;rate=16000")
        try await session.close()
    }

    /// A streamed upload whose connection is lost mid-body throws (a live body is not
    /// resent), and stops taking audio from its endless source.
    func testAStreamedUploadCutMidBodyThrows() async throws {
        let session = try await loopbackSession()
        let deadline = Date().addingTimeInterval(20)
        let source = microphone(Audio.bytes(Audio.ramp(samples: 1600 * 5))) { Date() < deadline }
        let relay = self.relay!
        let cutter = Task {
            try await Task.sleep(nanoseconds: 800_000_000)
            return relay.drop(requestsContaining: "/upload_audio")
        }
        let started = Date()
        do {
            let receipt = try await session.sendAudioStream(source)
            XCTFail("no error: \(receipt)")
        } catch {
            XCTAssertFalse(error is VoxwireError, "a transport error, not an answer: \(error)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(started), 5, "it ended with the connection")
        let dropped = try await cutter.value
        XCTAssertEqual(dropped, 1)
        // The session is fine: the next upload goes through.
        let receipt = try await session.uploadChunk(Data(count: 3200), sequence: 0)
        XCTAssertEqual(receipt.acceptedBytes, 3200)
        try await session.close()
    }

    /// After `close()` (DELETE) the session is gone: every call answers 404, the same for
    /// all of them, and the open streams have ended cleanly.
    func testADeletedSessionAnswers404() async throws {
        let session = try await loopbackSession()
        let events = EventLog(session.events())
        let voice = StreamRecorder(session.audioStream())
        try await events.wait(for: "session.created")
        try await voice.wait(what: "the first frame") { !$0.samples.isEmpty }

        try await session.close()
        assertClean(try await voice.waitForEnd(), "the stream ended cleanly")
        assertClean(try await events.waitForEnd(), "the events ended cleanly")
        try await session.close()  // again: harmless

        var errors: [VoxwireError] = []
        let chunk = Data(count: 3200)
        if let error = await voxwireError("upload", { _ = try await session.uploadChunk(chunk, sequence: 0) }) {
            errors.append(error)
        }
        if let error = await voxwireError("client event", { try await session.cancelResponse() }) {
            errors.append(error)
        }
        if let error = await voxwireError("stop_stream", { _ = try await session.stopStream() }) {
            errors.append(error)
        }
        let reopened = StreamRecorder(session.audioStream())
        if case .failure(let error as VoxwireError) = try await reopened.waitForEnd() {
            errors.append(error)
        } else {
            XCTFail("a new audio stream: \(String(describing: reopened.end))")
        }
        let reevents = EventLog(session.events())
        if case .failure(let error as VoxwireError) = try await reevents.waitForEnd() {
            errors.append(error)
        } else {
            XCTFail("new events: \(String(describing: reevents.end))")
        }
        XCTAssertEqual(errors.count, 5)
        for error in errors {
            XCTAssertEqual(error.status, 404)
            XCTAssertEqual(error.code, "session_not_found", "\(errors)")
        }
        XCTAssertEqual(Set(errors.map(\.message)).count, 1, "one identical answer")
        XCTAssertEqual(
            relay.requestHeads.filter { $0.contains("/stream_audio") }.count, 2,
            "a 404 is final: no reconnect")

        // The uploader stopped with the session: it refuses audio.
        do {
            try await session.sendAudio(Data(count: 3200))
            XCTFail("sendAudio after close")
        } catch VoxwireClientError.closed {
        } catch {
            XCTFail("sendAudio after close: \(error)")
        }
    }

    /// What the server refuses, as `VoxwireError`: status, code, param, Retry-After, the
    /// client event refused.
    func testErrorStatusesMapToVoxwireError() async throws {
        // 422: a bad session config, naming the parameter.
        let threshold = await voxwireError("422") {
            _ = try await self.client.createSession(config: ["turn_detection": ["threshold": 5]])
        }
        XCTAssertEqual(threshold?.status, 422)
        XCTAssertEqual(threshold?.param, "turn_detection.threshold")
        let unknown = await voxwireError("422 unknown key") {
            _ = try await self.client.createSession(config: ["no_such_setting": true])
        }
        XCTAssertEqual(unknown?.status, 422)
        XCTAssertEqual(unknown?.param, "no_such_setting")

        // 401: creation with a wrong API key.
        let stranger = VoxwireClient(baseURL: relay.url, apiKey: "wrong")
        let unauthorised = await voxwireError("401") { _ = try await stranger.createSession() }
        XCTAssertEqual(unauthorised?.status, 401)

        let session = try await client.createSession()

        // 413: a session config over the 64 KiB JSON cap.
        let tooLarge = await voxwireError("413") {
            _ = try await self.client.createSession(
                config: ["instructions": .string(String(repeating: "a", count: 70_000))])
        }
        XCTAssertEqual(tooLarge?.status, 413)
        XCTAssertEqual(tooLarge?.code, "body_too_large")

        // 415: a format the server does not take, refused from the headers alone.
        let oneChunk = AsyncStream<Data> { continuation in
            continuation.yield(Data(count: 3200))
            continuation.finish()
        }
        let unsupported = await voxwireError("415") {
            _ = try await session.sendAudioStream(oneChunk, format: .pcm16(rate: 7000))
        }
        XCTAssertEqual(unsupported?.status, 415)
        XCTAssertEqual(unsupported?.code, "unsupported_media_type")
        XCTAssertEqual(unsupported?.param, "Content-Type")

        // 409: one response at a time, as in OpenAI Realtime. Two in one POST are refused
        // (and nothing of it applies)...
        let events = EventLog(session.events())
        try await events.wait(for: "session.created")
        let two = [JSONValue](repeating: ["type": "response.create"], count: 2)
        let both = await voxwireError("409 two at once") { try await session.send(events: two) }
        XCTAssertEqual(both?.status, 409)
        XCTAssertEqual(both?.code, "conversation_already_has_active_response")
        XCTAssertEqual(both?.type, "invalid_request_error")
        XCTAssertNil(both?.eventID, "the events had no event_id")
        XCTAssertNil(both?.retryAfter)
        // ...and so is one while a reply is being spoken, naming the event refused, on the
        // HTTP answer and in the `error` event.
        let said = try await session.send(events: [
            [
                "type": "conversation.item.create",
                "item": [
                    "type": "message", "role": "user",
                    "content": [["type": "input_text", "text": "Turn on the kitchen lights."]],
                ],
            ],
            ["type": "response.create", "event_id": "evt_first"],
        ])
        XCTAssertEqual(said, 2)
        let again = await voxwireError("409 while active") {
            try await session.send(events: [["type": "response.create", "event_id": "evt_again"]])
        }
        XCTAssertEqual(again?.status, 409)
        XCTAssertEqual(again?.code, "conversation_already_has_active_response")
        XCTAssertEqual(again?.eventID, "evt_again")
        try await events.wait(for: "error", count: 2)
        let refused = events.all("error").compactMap(\.error)
        XCTAssertEqual(refused.map(\.code), [String](repeating: "conversation_already_has_active_response", count: 2))
        XCTAssertEqual(refused.map(\.eventID), [nil, "evt_again"])
        let done = try await events.wait(for: "response.done")
        XCTAssertEqual(done.responseStatus, "completed", "the first reply was not disturbed")
        XCTAssertEqual(events.all("response.created").count, 1, "\(events.types)")

        // The session is still fine after all that.
        let accepted = try await session.send(events: [["type": "input_audio_buffer.clear"]])
        XCTAssertEqual(accepted, 1)
        try await session.close()
    }
}
