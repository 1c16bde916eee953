#if canImport(AVFoundation)
    import AVFoundation
    import Foundation
    import VoxwireClient

    /// Talk from the microphone, hear the reply on the speakers (AVAudioEngine). Ctrl-C
    /// closes the session.
    enum MicrophoneTalk {
        static func run(client: VoxwireClient) async throws {
            guard await AVCaptureDevice.requestAccess(for: .audio) else {
                print("VoxwireTalk needs microphone access (System Settings > Privacy)")
                return
            }
            let session = try await client.createSession(config: ["output_sample_rate": 24000])
            print("session \(session.id): speak (Ctrl-C to stop)")

            // Events and the stream first, before any audio goes up.
            let events = session.events()
            var voice = session.audioStream().makeAsyncIterator()
            guard let first = try await voice.next() else { return }  // the WAV header's rate
            let audio = try AudioIO(
                captureRate: session.info.inputSampleRate, playbackRate: first.sampleRate)
            audio.play(first)

            let interrupt = closeOnInterrupt(session)
            defer {
                interrupt.cancel()
                audio.stop()
            }
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await Self.printEvents(events, barge: audio) }
                group.addTask { await Self.upload(audio.microphone, to: session) }
                // The voice: until the session is closed (the server ends the stream). A lost
                // connection is resumed by the client; audio it could not get back is reported.
                while let frame = try await voice.next() {
                    if let gap = frame.gapBefore {
                        print("          (network: \(gap.missingMs) ms of the reply lost)")
                    }
                    audio.play(frame)
                }
                group.cancelAll()
            }
        }

        /// Microphone audio to the uploader, in order (one consumer of the tap's stream).
        static func upload(_ microphone: AsyncStream<Data>, to session: VoxwireSession) async {
            var warned = Date.distantPast
            for await pcm in microphone {
                do {
                    try await session.sendAudio(pcm)
                } catch VoxwireClientError.uploadBacklogFull(let pending) {
                    if Date().timeIntervalSince(warned) > 1 {  // a live mic cannot wait: drop
                        print("network behind (\(pending) chunks queued): dropping microphone audio")
                        warned = Date()
                    }
                } catch {
                    print("upload stopped: \(error)")
                    return
                }
            }
        }

        /// Prints the conversation; stops the speaker the moment the user starts talking.
        static func printEvents(
            _ events: AsyncThrowingStream<VoxwireEvent, Error>, barge audio: AudioIO
        ) async throws {
            for try await event in events {
                switch event.type {
                case "input_audio_buffer.speech_started":
                    audio.flushPlayback()  // barge-in: the server has cut the reply too
                case "output_audio_buffer.cleared":
                    audio.flushPlayback()  // the server dropped the reply's audio (cancelled)
                case "conversation.item.input_audio_transcription.completed":
                    print("you:      \(event.transcript ?? "")")
                case "response.output_audio_transcript.done", "response.audio_transcript.done":
                    print("voxwire:  \(event.transcript ?? "")")
                case "response.output_text.done", "response.text.done":
                    print("voxwire:  \(event.text ?? "")")
                case "response.done" where event.responseStatus == "cancelled":
                    print("          (interrupted)")
                case "error":
                    print("error:    \(event.error.map(String.init(describing:)) ?? "?")")
                default:
                    break
                }
            }
        }

        /// Ctrl-C deletes the session, which ends the streams and so `run`.
        static func closeOnInterrupt(_ session: VoxwireSession) -> DispatchSourceSignal {
            signal(SIGINT, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: SIGINT, queue: .main)
            source.setEventHandler {
                Task { try? await session.close() }
            }
            source.resume()
            return source
        }
    }
#endif
