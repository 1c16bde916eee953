import Foundation
import VoxwireClient
import XCTest

/// Spoken turns against the real server and its real models (Silero, Whisper, Piper, the
/// `echo` responder), through the package's public API only: the spoken fixture goes up,
/// the transcript and the reply come back.
final class ConversationTests: IntegrationTestCase {
    /// `sendAudio` as the app uses it: 100 ms pieces as the microphone delivers them, sent
    /// with `uploadTask` one at a time; the reply read through `URLSessionDataDelegate`.
    func testASpokenTurnUploadedIn100msChunks() async throws {
        let outputRate = 24000
        let session = try await client.createSession(config: ["output_sample_rate": .number(Double(outputRate))])
        let events = EventLog(session.events())
        let voice = StreamRecorder(session.audioStream())
        try await events.wait(for: "session.created")
        // The header and the lead go out at once: the first frame is not held back.
        try await voice.wait(timeout: 5, what: "the first frame") { !$0.samples.isEmpty }
        let firstFrame = try XCTUnwrap(voice.arrivals.first)
        XCTAssertLessThan(firstFrame.time.timeIntervalSince(voice.started), 2.0)

        let speech = try Audio.spokenFixture()
        let pacer = Pacer()
        for piece in Audio.pieces(speech) {
            await pacer.tick()
            try await session.sendAudio(piece)
        }
        var silent = 0
        while events.all("response.done").isEmpty {  // a live microphone: silence goes on
            guard silent < 250 else { throw TestFailure("no reply within 25 s: \(events.types)") }
            await pacer.tick()
            try await session.sendAudio(Audio.silence(ms: 100))
            silent += 1
        }
        try await Task.sleep(nanoseconds: 300_000_000)
        let acked = await session.uploader.ackedSequence
        try await session.close()
        assertClean(try await voice.waitForEnd(), "close() ends the stream cleanly")
        assertClean(try await events.waitForEnd(), "close() ends the events cleanly")

        // The uploads on the wire: X-Sequence 0, 1, 2..., one 3200-byte chunk each. On Apple
        // platforms a Data body with a Content-Length; on Linux a body stream, sent chunked
        // (swift-corelibs-foundation cannot resend a Data body: see `voxwireUpload`).
        let uploads = relay.requestHeads.filter { $0.contains("/upload_audio ") }
        XCTAssertEqual(uploads.count, (acked ?? -1) + 1)
        XCTAssertEqual(uploads.map { header("X-Sequence", in: $0) }, uploads.indices.map { String($0) })
        XCTAssertTrue(uploads.allSatisfy { header("Content-Type", in: $0) == "application/octet-stream" })
        #if canImport(FoundationNetworking)
            XCTAssertTrue(
                uploads.allSatisfy {
                    header("Transfer-Encoding", in: $0) == "chunked" && header("Content-Length", in: $0) == nil
                        && header("Expect", in: $0) == nil
                }, "\(uploads.first ?? "")")
        #else
            XCTAssertTrue(
                uploads.allSatisfy {
                    header("Content-Length", in: $0) == "3200" && header("Transfer-Encoding", in: $0) == nil
                }, "\(uploads.first ?? "")")
        #endif
        print("a chunk upload as sent:\n\(uploads.first ?? "")")

        // The stream: the WAV header's rate, real-time pacing, never ahead by more than the
        // lead, no stall.
        XCTAssertEqual(voice.sampleRates, [outputRate])
        let arrivals = voice.arrivals
        let t0 = arrivals[0].time
        let settled = try XCTUnwrap(arrivals.first { $0.time.timeIntervalSince(t0) >= 1 })
        let last = try XCTUnwrap(arrivals.last)
        let measuredRate = Double(last.total - settled.total) / last.time.timeIntervalSince(settled.time)
        XCTAssertEqual(measuredRate, Double(outputRate), accuracy: Double(outputRate) * 0.05)
        for (previous, next) in zip(arrivals, arrivals.dropFirst()) {
            XCTAssertLessThan(next.time.timeIntervalSince(previous.time), 0.5, "a stall in the stream")
            let ahead = Double(next.total) / Double(outputRate) - next.time.timeIntervalSince(t0)
            XCTAssertLessThan(ahead, 0.35, "more than the lead ahead of real time")
        }

        // The turn, in order, and the transcript.
        let types = events.types
        XCTAssertEqual(types.first, "session.created")
        let order = [
            "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed", "conversation.item.input_audio_transcription.completed",
            "response.created", "response.done",
        ]
        let positions = try order.map { type in
            try XCTUnwrap(types.firstIndex(of: type), "no \(type) in \(types)")
        }
        XCTAssertEqual(positions, positions.sorted(), "\(types)")
        XCTAssertEqual(events.events.compactMap(\.id), Array(1...events.events.count), "ids 1, 2, 3...")
        let transcript = try XCTUnwrap(
            events.all("conversation.item.input_audio_transcription.completed").first?.transcript)
        XCTAssertGreaterThanOrEqual(wordRecall(Audio.sentence, in: transcript), 0.7, transcript)
        let done = try XCTUnwrap(events.all("response.done").first)
        XCTAssertEqual(done.responseStatus, "completed")

        // OpenAI Realtime's GA names, not the beta ones: the user's item is added at the
        // commit (its transcript still null) and done with the transcript; the reply's
        // message, its words (the echo: the transcript), its audio queued and played out.
        let beta: Set = [
            "response.audio_transcript.delta", "response.audio_transcript.done", "response.audio.done",
            "conversation.item.created",
        ]
        XCTAssertTrue(beta.isDisjoint(with: types), "\(types)")
        let added = events.all("conversation.item.added")
        XCTAssertEqual(added.map { $0["item"]?["role"]?.stringValue }, ["user", "assistant"], "\(types)")
        let committed = try XCTUnwrap(events.all("input_audio_buffer.committed").first)
        let userItem = try XCTUnwrap(added.first?["item"])
        XCTAssertEqual(userItem["id"]?.stringValue, committed.itemID)
        XCTAssertEqual(userItem["content"]?.arrayValue?.first?["type"]?.stringValue, "input_audio")
        let userDone = try XCTUnwrap(
            events.all("conversation.item.done").first { $0["item"]?["id"] == userItem["id"] }, "\(types)")
        XCTAssertEqual(userDone["item"]?["content"]?.arrayValue?.first?["transcript"]?.stringValue, transcript)
        let responseID = try XCTUnwrap(done["response"]?["id"]?.stringValue)
        let words = events.all("response.output_audio_transcript.delta")
        XCTAssertTrue(words.allSatisfy { $0.responseID == responseID })
        XCTAssertEqual(words.compactMap(\.delta).joined(), transcript, "the echo's words as they came")
        XCTAssertEqual(events.all("response.output_audio_transcript.done").first?.transcript, transcript)
        XCTAssertEqual(events.all("response.output_audio.done").count, 1)
        XCTAssertTrue(events.all("response.output_text.delta").isEmpty, "a spoken reply")
        let replyOrder = [
            "response.created", "response.output_item.added", "output_audio_buffer.started",
            "response.output_audio.done", "response.output_item.done", "response.done",
            "output_audio_buffer.stopped",
        ]
        let replyPositions = try replyOrder.map { type in
            try XCTUnwrap(types.firstIndex(of: type), "no \(type) in \(types)")
        }
        XCTAssertEqual(replyPositions, replyPositions.sorted(), "\(types)")
        XCTAssertEqual(events.all("output_audio_buffer.stopped").first?.responseID, responseID)

        // The reply: silence until the user stopped, then the echo, as long as the server says.
        let samples = voice.samples
        let stopped = try XCTUnwrap(events.all("input_audio_buffer.speech_stopped").first)
        let quietUntil = voice.received(by: try XCTUnwrap(events.time(of: stopped)))
        XCTAssertTrue(samples[..<quietUntil].allSatisfy { $0 == 0 }, "audio before the turn ended")
        let first = try XCTUnwrap(samples.firstIndex { $0 != 0 })
        let end = try XCTUnwrap(samples.lastIndex { $0 != 0 }) + 1
        XCTAssertGreaterThan(Audio.peak(samples[first..<end]), 3000)
        let heardMs = Double(end - first) * 1000 / Double(outputRate)
        let audioMs = try XCTUnwrap(done["response"]?["audio_ms"]?.doubleValue)
        XCTAssertGreaterThan(audioMs, 1500, "the echo of a 3 s sentence")
        XCTAssertEqual(heardMs, audioMs, accuracy: 150, "the reply heard whole")
    }

    /// The same turn as one long chunked upload (`sendAudioStream`), fed like a microphone.
    func testASpokenTurnAsOneStreamedUpload() async throws {
        let session = try await client.createSession()
        let events = EventLog(session.events())
        let voice = StreamRecorder(session.audioStream())
        try await events.wait(for: "session.created")

        let speech = try Audio.spokenFixture()
        let sent = ByteCounter()
        let deadline = Date().addingTimeInterval(30)
        let receipt = try await session.sendAudioStream(
            microphone(speech, counting: sent) {
                events.all("response.done").isEmpty && Date() < deadline
            })
        XCTAssertEqual(receipt.acceptedBytes, sent.count, "all of the body accepted")
        XCTAssertNil(receipt.ackedSequence)
        try await Task.sleep(nanoseconds: 200_000_000)
        try await session.close()
        _ = try? await voice.waitForEnd()

        let transcript = try XCTUnwrap(
            events.all("conversation.item.input_audio_transcription.completed").first?.transcript,
            "\(events.types)")
        XCTAssertGreaterThanOrEqual(wordRecall(Audio.sentence, in: transcript), 0.7, transcript)
        XCTAssertEqual(events.all("response.done").first?.responseStatus, "completed")
        XCTAssertGreaterThan(Audio.peak(voice.samples[...]), 3000, "the reply was heard")

        // One request, chunked: no Content-Length, no X-Sequence.
        let uploads = relay.requestHeads.filter { $0.contains("/upload_audio ") }
        XCTAssertEqual(uploads.count, 1)
        let head = try XCTUnwrap(uploads.first)
        XCTAssertEqual(header("Transfer-Encoding", in: head)?.lowercased(), "chunked")
        XCTAssertNil(header("Content-Length", in: head))
        XCTAssertNil(header("X-Sequence", in: head))
        XCTAssertEqual(header("Content-Type", in: head), "application/octet-stream")
        print("streamed upload request as sent:\n\(head)")
    }

    /// Talking over the reply: the server cuts it, the stream falls silent within the lead
    /// and a frame, the reply is reported cancelled and truncated, and the new turn is heard.
    func testBargeInCutsTheReply() async throws {
        let rate = 16000
        let session = try await client.createSession()
        let events = EventLog(session.events())
        let voice = StreamRecorder(session.audioStream())
        try await events.wait(for: "session.created")

        let speech = try Audio.spokenFixture()
        let pacer = Pacer()
        for piece in Audio.pieces(speech) {
            await pacer.tick()
            try await session.sendAudio(piece)
        }
        var silent = 0
        while voice.loudSamples < rate * 6 / 10 {  // 600 ms of the reply played
            guard silent < 250 else { throw TestFailure("no reply within 25 s: \(events.types)") }
            await pacer.tick()
            try await session.sendAudio(Audio.silence(ms: 100))
            silent += 1
        }
        for piece in Audio.pieces(speech) {  // the user talks over it
            await pacer.tick()
            try await session.sendAudio(piece)
        }
        for _ in 0..<15 {
            await pacer.tick()
            try await session.sendAudio(Audio.silence(ms: 100))
        }
        try await events.wait(for: "conversation.item.input_audio_transcription.completed", count: 2)
        try await session.close()
        _ = try? await voice.waitForEnd()

        let first = try XCTUnwrap(events.all("response.done").first)
        XCTAssertEqual(first.responseStatus, "cancelled", "\(events.types)")
        // Its audio was dropped from the output buffer, which never played out.
        let cutID = try XCTUnwrap(first["response"]?["id"]?.stringValue)
        XCTAssertEqual(events.all("output_audio_buffer.cleared").map(\.responseID), [cutID], "\(events.types)")
        XCTAssertFalse(
            events.all("output_audio_buffer.stopped").contains { $0.responseID == cutID }, "\(events.types)")
        let truncated = try XCTUnwrap(events.all("conversation.item.truncated").first, "\(events.types)")
        let playedMs = try XCTUnwrap(truncated["audio_end_ms"]?.doubleValue)
        XCTAssertGreaterThan(playedMs, 500)
        XCTAssertLessThan(playedMs, 2500, "cut well before the end of a 3 s reply")

        // From the moment the server heard the user (plus lead, a frame and slack), silence
        // until the user stopped.
        let barge = try XCTUnwrap(events.all("input_audio_buffer.speech_started").dropFirst().first)
        let stopped = try XCTUnwrap(events.all("input_audio_buffer.speech_stopped").dropFirst().first)
        let bargeAt = try XCTUnwrap(events.time(of: barge))
        let from = voice.received(by: bargeAt.addingTimeInterval(0.35))
        let to = voice.received(by: try XCTUnwrap(events.time(of: stopped)))
        let samples = voice.samples
        XCTAssertGreaterThan(to - from, rate, "at least a second of the user talking over the reply")
        XCTAssertTrue(samples[from..<to].allSatisfy { $0 == 0 }, "the reply kept playing")
        XCTAssertGreaterThan(Audio.peak(samples[..<from]), 3000, "the reply was playing before")

        let second = try XCTUnwrap(
            events.all("conversation.item.input_audio_transcription.completed").dropFirst().first?.transcript)
        XCTAssertGreaterThanOrEqual(wordRecall(Audio.sentence, in: second), 0.7, second)
    }
}
