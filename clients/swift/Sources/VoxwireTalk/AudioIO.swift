#if canImport(AVFoundation)
    import AVFoundation
    import VoxwireClient

    /// Microphone in, speaker out, on one `AVAudioEngine`.
    ///
    /// - Capture: a tap on the input node; each buffer goes through an `AVAudioConverter` to
    ///   16 kHz Int16 mono (what the session takes by default) and out through ``microphone``.
    /// - Playback: an `AVAudioPlayerNode` fed with the stream's frames as they arrive
    ///   (Int16 → Float32 buffers at the stream's rate; the mixer converts to the device's).
    /// - Voice processing (echo cancellation) is on, so the assistant's voice from the
    ///   speakers does not reach the server as the user's speech and barge in on itself.
    final class AudioIO: @unchecked Sendable {  // engine calls are serialised on `queue`
        /// Converted microphone audio: PCM16 LE mono at `captureRate`, one `Data` per tap.
        let microphone: AsyncStream<Data>

        private let engine = AVAudioEngine()
        private let player = AVAudioPlayerNode()
        private let playbackFormat: AVAudioFormat
        private let queue = DispatchQueue(label: "voxwire.talk.playback")
        private let microphoneInput: AsyncStream<Data>.Continuation

        /// - Parameters:
        ///   - captureRate: the session's `input_sample_rate`.
        ///   - playbackRate: the stream's rate, from its WAV header.
        init(captureRate: Int, playbackRate: Int) throws {
            var input: AsyncStream<Data>.Continuation!
            microphone = AsyncStream(bufferingPolicy: .bufferingNewest(100)) { input = $0 }
            microphoneInput = input
            playbackFormat = AVAudioFormat(
                commonFormat: .pcmFormatFloat32, sampleRate: Double(playbackRate), channels: 1,
                interleaved: false)!

            try engine.inputNode.setVoiceProcessingEnabled(true)
            engine.attach(player)
            engine.connect(player, to: engine.mainMixerNode, format: playbackFormat)

            let micFormat = engine.inputNode.outputFormat(forBus: 0)
            let target = AVAudioFormat(
                commonFormat: .pcmFormatInt16, sampleRate: Double(captureRate), channels: 1,
                interleaved: true)!
            guard let converter = AVAudioConverter(from: micFormat, to: target) else {
                throw VoxwireClientError.invalidResponse("cannot convert \(micFormat) to \(target)")
            }
            let continuation = microphoneInput
            engine.inputNode.installTap(onBus: 0, bufferSize: 1024, format: micFormat) { buffer, _ in
                if let pcm = Self.convert(buffer, with: converter, to: target) {
                    continuation.yield(pcm)
                }
            }
            engine.prepare()
            try engine.start()
            player.play()
        }

        /// Schedules a stream frame to play after the ones already queued.
        func play(_ frame: AudioFrame) {
            let count = AVAudioFrameCount(frame.samples.count)
            guard count > 0,
                let buffer = AVAudioPCMBuffer(pcmFormat: playbackFormat, frameCapacity: count)
            else { return }
            buffer.frameLength = count
            let out = buffer.floatChannelData![0]
            for (i, sample) in frame.samples.enumerated() {
                out[i] = Float(sample) / 32768
            }
            queue.async { self.player.scheduleBuffer(buffer) }
        }

        /// Barge-in: drops everything queued on the player at once.
        func flushPlayback() {
            queue.async {
                self.player.stop()  // discards the scheduled buffers
                self.player.play()
            }
        }

        func stop() {
            engine.inputNode.removeTap(onBus: 0)
            engine.stop()
            microphoneInput.finish()
        }

        /// One tap buffer as PCM16 LE mono at the target rate.
        private static func convert(
            _ buffer: AVAudioPCMBuffer, with converter: AVAudioConverter, to target: AVAudioFormat
        ) -> Data? {
            let ratio = target.sampleRate / buffer.format.sampleRate
            let capacity = AVAudioFrameCount(Double(buffer.frameLength) * ratio) + 32
            guard let out = AVAudioPCMBuffer(pcmFormat: target, frameCapacity: capacity) else {
                return nil
            }
            var given = false
            var error: NSError?
            let status = converter.convert(to: out, error: &error) { _, inputStatus in
                if given {
                    inputStatus.pointee = .noDataNow  // more next tap: keep the resampler's state
                    return nil
                }
                given = true
                inputStatus.pointee = .haveData
                return buffer
            }
            guard status != .error, out.frameLength > 0, let samples = out.int16ChannelData else {
                return nil
            }
            // Int16 in memory is little-endian on every Apple platform: the bytes go as they are.
            return Data(bytes: samples[0], count: Int(out.frameLength) * MemoryLayout<Int16>.size)
        }
    }
#endif
