import Foundation
import VoxwireClient

/// One conversation from a WAV file: the file goes up as if spoken into a microphone (in
/// real time, 100 ms at a time, then silence while the server answers), the events and
/// transcripts are printed as they come, and the reply is saved as a WAV file.
///
/// Works everywhere the client builds (Linux too): no audio devices involved.
struct FileTalk {
    let client: VoxwireClient
    let input: URL
    let output: URL?
    /// One long chunked upload instead of 100 ms chunks.
    let streamed: Bool
    /// Write the whole stream (silence too), not just the reply.
    let wholeStream: Bool
    /// Give up waiting for replies after this long.
    let timeout: TimeInterval

    func run() async throws {
        let wav = try WAVFile(contentsOf: input)
        let seconds = Double(wav.samples.count) / Double(wav.sampleRate)
        let session = try await client.createSession(config: [
            "input_sample_rate": .number(Double(wav.sampleRate)),
            "output_sample_rate": .number(Double(wav.sampleRate)),
        ])
        let length = String(format: "%.2f", seconds)
        print("session \(session.id): \(input.lastPathComponent), \(length) s at \(wav.sampleRate) Hz")

        // Events and the stream first, before any audio goes up.
        let state = ConversationState()
        let printer = Task { await Self.printEvents(session.events(), into: state) }
        let recorder = Task { () -> (samples: [Int16], rate: Int?) in
            var samples: [Int16] = []
            var rate: Int?
            do {
                for try await frame in session.audioStream() {
                    rate = frame.sampleRate
                    samples += frame.samples
                }
            } catch {
                print("audio stream: \(error)")
            }
            return (samples, rate)
        }

        let started = Date()
        let speech = wav.pcm16LittleEndian
        let chunkBytes = wav.sampleRate / 10 * 2
        let silence = Data(count: chunkBytes)
        // After the file: silence, as a live microphone would send, until every turn is
        // answered (or the timeout).
        let keepTalking: @Sendable () -> Bool = {
            Date().timeIntervalSince(started) < seconds + timeout && !state.isSettled
        }
        let pieces = stride(from: 0, to: speech.count, by: chunkBytes).map {
            speech.subdata(in: $0..<min(speech.count, $0 + chunkBytes))
        }
        let microphone = AsyncStream<Data> { continuation in
            let feeder = Task {
                var ticks = 0
                func tick() async {
                    ticks += 1
                    let due = started.addingTimeInterval(Double(ticks) / 10)
                    let wait = due.timeIntervalSinceNow
                    if wait > 0 { try? await Task.sleep(nanoseconds: UInt64(wait * 1e9)) }
                }
                for piece in pieces {
                    await tick()
                    continuation.yield(piece)
                }
                state.fileSent()
                while keepTalking(), !Task.isCancelled {
                    await tick()
                    continuation.yield(silence)
                }
                continuation.finish()
            }
            continuation.onTermination = { _ in feeder.cancel() }
        }
        if streamed {
            let receipt = try await session.sendAudioStream(microphone)
            print("upload: one chunked request, \(receipt.acceptedBytes) bytes accepted")
        } else {
            for await piece in microphone {
                try await session.sendAudio(piece)
            }
            try await session.uploader.flush()
            let chunks = (await session.uploader.ackedSequence ?? -1) + 1
            print("upload: \(chunks) chunks of 100 ms")
        }
        if !state.isSettled { print("(timed out waiting for the replies)") }
        try await Task.sleep(nanoseconds: 300_000_000)  // the reply's last frames
        try await session.close()  // ends the stream and the events
        await printer.value
        let (samples, rate) = await recorder.value

        guard let output else { return }
        guard let rate else {
            print("no audio received: \(output.path) not written")
            return
        }
        var reply = samples[...]
        if !wholeStream {
            guard let first = samples.firstIndex(where: { $0 != 0 }),
                let last = samples.lastIndex(where: { $0 != 0 })
            else {
                print("the reply was silent: \(output.path) not written")
                return
            }
            reply = samples[first...last]
        }
        try WAVFile(samples: Array(reply), sampleRate: rate).write(to: output)
        let replySeconds = String(format: "%.2f", Double(reply.count) / Double(rate))
        print("reply: \(output.path), \(replySeconds) s at \(rate) Hz")
    }

    /// Prints every event (deltas only as the text they carry), and tracks the turns.
    static func printEvents(
        _ events: AsyncThrowingStream<VoxwireEvent, Error>, into state: ConversationState
    ) async {
        do {
            for try await event in events {
                state.saw(event)
                switch event.type {
                case "conversation.item.input_audio_transcription.delta",
                    "response.output_audio_transcript.delta", "response.audio_transcript.delta",
                    "response.output_text.delta", "response.text.delta",
                    "response.function_call_arguments.delta":
                    continue  // the completed text follows
                case "conversation.item.input_audio_transcription.completed":
                    print("you:      \(event.transcript ?? "")")
                case "response.output_audio_transcript.done", "response.audio_transcript.done":
                    print("voxwire:  \(event.transcript ?? "")")
                case "response.output_text.done", "response.text.done":
                    print("voxwire:  \(event.text ?? "")")
                case "response.done":
                    print("event     response.done (\(event.responseStatus ?? "?"))")
                case "error":
                    print("error:    \(event.error.map(String.init(describing:)) ?? "?")")
                default:
                    print("event     \(event.type)")
                }
            }
        } catch {
            print("events: \(error)")
        }
    }
}

/// What has happened in the conversation, to know when every turn has been answered.
final class ConversationState: @unchecked Sendable {  // state under `lock`
    private let lock = NSLock()
    private var sentAt: Date?
    private var lastEvent = Date()
    private var committed = 0
    private var transcribed = 0
    private var created = 0
    private var done = 0

    func fileSent() {
        lock.lock()
        sentAt = Date()
        lock.unlock()
    }

    func saw(_ event: VoxwireEvent) {
        lock.lock()
        defer { lock.unlock() }
        lastEvent = Date()
        switch event.type {
        case "input_audio_buffer.committed": committed += 1
        case "conversation.item.input_audio_transcription.completed",
            "conversation.item.input_audio_transcription.failed":
            transcribed += 1
        case "response.created": created += 1
        case "response.done": done += 1
        default: break
        }
    }

    /// The file has been sent and followed by 1.5 s of silence, every turn is transcribed,
    /// every reply is done, and nothing has happened for a second.
    var isSettled: Bool {
        lock.lock()
        defer { lock.unlock() }
        guard let sentAt, Date().timeIntervalSince(sentAt) > 1.5 else { return false }
        return committed == transcribed && created == done && Date().timeIntervalSince(lastEvent) > 1
    }
}
