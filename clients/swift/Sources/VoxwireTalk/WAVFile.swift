import Foundation

/// Mono PCM16 audio read from, or written to, a WAV file.
struct WAVFile {
    var samples: [Int16]
    var sampleRate: Int

    enum Failure: Error, CustomStringConvertible {
        case unreadable(String)
        var description: String {
            switch self {
            case .unreadable(let why): return "not a usable WAV file: \(why)"
            }
        }
    }

    /// Reads a RIFF/WAVE file: PCM 16-bit, or 32-bit float, any number of channels (mixed
    /// down to mono).
    init(contentsOf url: URL) throws {
        let bytes = [UInt8](try Data(contentsOf: url))
        func u16(_ at: Int) -> Int { Int(bytes[at]) | Int(bytes[at + 1]) << 8 }
        func u32(_ at: Int) -> Int { u16(at) | u16(at + 2) << 16 }
        func tag(_ at: Int) -> String { String(decoding: bytes[at..<at + 4], as: UTF8.self) }
        guard bytes.count >= 12, tag(0) == "RIFF", tag(8) == "WAVE" else {
            throw Failure.unreadable("no RIFF/WAVE header")
        }
        var format: (code: Int, channels: Int, rate: Int, bits: Int)?
        var at = 12
        while at + 8 <= bytes.count {
            let size = u32(at + 4)
            let body = at + 8
            if tag(at) == "fmt ", body + 16 <= bytes.count {
                var code = u16(body)
                if code == 0xFFFE, size >= 26 { code = u16(body + 24) }  // WAVE_FORMAT_EXTENSIBLE
                format = (code, u16(body + 2), u32(body + 4), u16(body + 14))
            }
            if tag(at) == "data" {
                guard let format else { throw Failure.unreadable("data before fmt") }
                let end = min(bytes.count, body + size)
                samples = try Self.decode(bytes[body..<end], format.code, format.channels, format.bits)
                sampleRate = format.rate
                return
            }
            at = body + size + (size & 1)
        }
        throw Failure.unreadable("no data chunk")
    }

    init(samples: [Int16], sampleRate: Int) {
        self.samples = samples
        self.sampleRate = sampleRate
    }

    private static func decode(
        _ bytes: ArraySlice<UInt8>, _ code: Int, _ channels: Int, _ bits: Int
    ) throws -> [Int16] {
        guard channels >= 1 else { throw Failure.unreadable("no channels") }
        let data = Array(bytes)
        let width: Int
        let sample: (Int) -> Double  // byte offset -> [-1, 1)
        switch (code, bits) {
        case (1, 16):
            width = 2
            sample = { Double(Int16(bitPattern: UInt16(data[$0]) | UInt16(data[$0 + 1]) << 8)) / 32768 }
        case (3, 32):
            width = 4
            sample = {
                let raw = UInt32(data[$0]) | UInt32(data[$0 + 1]) << 8 | UInt32(data[$0 + 2]) << 16
                    | UInt32(data[$0 + 3]) << 24
                return Double(Float(bitPattern: raw))
            }
        default:
            throw Failure.unreadable("format \(code), \(bits) bits: use PCM16 or 32-bit float")
        }
        let frame = width * channels
        return stride(from: 0, to: data.count - frame + 1, by: frame).map { start in
            var sum = 0.0
            for channel in 0..<channels { sum += sample(start + channel * width) }
            let value = (sum / Double(channels) * 32768).rounded()
            return Int16(max(-32768, min(32767, value)))
        }
    }

    /// Writes a mono PCM16 WAV file.
    func write(to url: URL) throws {
        var out = Data()
        func put32(_ value: Int) { out.append(contentsOf: (0..<4).map { UInt8((value >> (8 * $0)) & 0xFF) }) }
        func put16(_ value: Int) { out.append(contentsOf: [UInt8(value & 0xFF), UInt8((value >> 8) & 0xFF)]) }
        let dataBytes = samples.count * 2
        out.append(contentsOf: Array("RIFF".utf8))
        put32(36 + dataBytes)
        out.append(contentsOf: Array("WAVEfmt ".utf8))
        put32(16)
        put16(1)
        put16(1)
        put32(sampleRate)
        put32(sampleRate * 2)
        put16(2)
        put16(16)
        out.append(contentsOf: Array("data".utf8))
        put32(dataBytes)
        out.append(pcm16LittleEndian)
        try out.write(to: url)
    }

    /// The samples as PCM16 little-endian bytes (what `upload_audio` takes).
    var pcm16LittleEndian: Data {
        var data = Data(capacity: samples.count * 2)
        for sample in samples {
            let value = UInt16(bitPattern: sample)
            data.append(contentsOf: [UInt8(value & 0xFF), UInt8(value >> 8)])
        }
        return data
    }
}
