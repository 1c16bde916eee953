// VoxwireTalk: talk to a voxwire server.
//
//     swift run VoxwireTalk http://127.0.0.1:8000 --wav question.wav --out reply.wav
//     swift run VoxwireTalk http://127.0.0.1:8000           # microphone (AVFoundation)
//
// With --wav (everywhere, Linux too): the file is sent as if spoken (in real time), the
// events and transcripts are printed, and the reply is written to --out. Without it, where
// AVFoundation exists: speak; the server detects your turn, prints what it heard and answers
// through the speakers; talking over the answer interrupts it. VOXWIRE_API_KEY=... if the
// server has one.

import Foundation
import VoxwireClient

@main
struct VoxwireTalk {
    static let usage = """
        usage: VoxwireTalk [SERVER] [--wav IN.wav [--out REPLY.wav] [--stream] [--whole-stream]
                                     [--timeout SECONDS]]

          SERVER          the server's URL (default http://127.0.0.1:8000)
          --wav IN.wav    send this file (PCM16 or float WAV, mono or mixed down) as speech
          --out REPLY.wav write the reply there (mono PCM16 at the file's rate)
          --stream        one long chunked upload instead of 100 ms chunks
          --whole-stream  write the whole audio stream, silence included, not just the reply
          --timeout S     how long to wait for the replies after the file (default 60)
        Without --wav: the microphone and the speakers (where AVFoundation exists).
        """

    static func main() async {
        var server = URL(string: "http://127.0.0.1:8000")!
        var input: URL?
        var output: URL?
        var streamed = false
        var wholeStream = false
        var timeout: TimeInterval = 60
        var arguments = CommandLine.arguments.dropFirst()
        func value(_ flag: String) -> String {
            guard let next = arguments.popFirst() else { fail("\(flag) needs a value") }
            return next
        }
        while let argument = arguments.popFirst() {
            switch argument {
            case "--wav": input = URL(fileURLWithPath: value(argument))
            case "--out": output = URL(fileURLWithPath: value(argument))
            case "--stream": streamed = true
            case "--whole-stream": wholeStream = true
            case "--timeout":
                guard let seconds = TimeInterval(value(argument)), seconds > 0 else { fail("bad --timeout") }
                timeout = seconds
            case "-h", "--help":
                print(usage)
                return
            default:
                guard !argument.hasPrefix("-"), let url = URL(string: argument), url.scheme != nil else {
                    fail("unknown argument \(argument)")
                }
                server = url
            }
        }
        let apiKey = ProcessInfo.processInfo.environment["VOXWIRE_API_KEY"]
        let client = VoxwireClient(baseURL: server, apiKey: apiKey)
        do {
            if let input {
                try await FileTalk(
                    client: client, input: input, output: output, streamed: streamed,
                    wholeStream: wholeStream, timeout: timeout
                ).run()
            } else {
                #if canImport(AVFoundation)
                    try await MicrophoneTalk.run(client: client)
                #else
                    fail("no microphone support here (no AVFoundation): use --wav IN.wav")
                #endif
            }
        } catch {
            print("VoxwireTalk: \(error)")
            exit(1)
        }
    }

    static func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data("VoxwireTalk: \(message)\n\n\(usage)\n".utf8))
        exit(2)
    }
}
